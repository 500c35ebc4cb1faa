// Command hello is the tests' workload: `hello serve` answers HTTP and logs one line per request;
// `hello get URL` fetches a URL and prints the body (for `kubectl exec` and in-cluster checks);
// `hello cat FILE` prints a file (the pod's routes when a check fails).
package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "cat" { // for diagnostics: the pod's routes, resolv.conf...
		data, err := os.ReadFile(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Stdout.Write(data)
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "get" {
		client := http.Client{Timeout: 20 * time.Second}
		resp, err := client.Get(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Print(string(body))
		if resp.StatusCode != http.StatusOK {
			os.Exit(1)
		}
		return
	}
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("request %s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
		fmt.Fprintf(w, "hello from %s\n", host)
	})
	log.Printf("hello serving on :8080 as %s", host)
	log.Fatal(http.ListenAndServe(":8080", nil))
}
