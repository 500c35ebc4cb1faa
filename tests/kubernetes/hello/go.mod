module talos-os/tests/hello

go 1.26
