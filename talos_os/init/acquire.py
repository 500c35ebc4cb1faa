"""Get a valid machine config from the platform, however long it takes.

The node has nothing to do without a config, so this never gives up: an unreachable source is
retried with jittered exponential backoff (progress on the console), and an invalid config is
reported line by line (the config model's messages) and polled again until a good one appears.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from talos_os.config import ConfigError, MachineConfig, loads
from talos_os.lib.fetch import ConfigRef
from talos_os.lib.retry import backoff_delay

Log = Callable[[str], None]


@dataclass(frozen=True)
class Acquired:
    """The validated config, its raw bytes (kept for osd) and where it came from."""

    config: MachineConfig
    data: bytes
    source: str
    attempts: int
    kubernetes_problem: str = ""  # set when only the Kubernetes settings were invalid (and left out)


# Sections whose mistakes cost only Kubernetes: the node comes up without it, answering osctl.
KUBERNETES_SECTIONS = ("cluster.kubernetes", "cluster.network")


def without_kubernetes(data: bytes, err: ConfigError) -> tuple[MachineConfig, bytes] | None:
    """When every problem lies in the Kubernetes settings, the config with those sections at their
    defaults (so the OS and osd run while the operator fixes them); else None."""
    if not err.issues or not all(i.path.startswith(KUBERNETES_SECTIONS) for i in err.issues):
        return None
    try:
        doc = yaml.safe_load(data)
        for name in ("kubernetes", "network"):
            doc["cluster"].pop(name, None)
        text = yaml.safe_dump(doc, sort_keys=False).encode()
        return loads(text), text
    except (ConfigError, yaml.YAMLError, TypeError, KeyError, AttributeError):
        return None


@dataclass
class AcquirePolicy:
    """How patiently to wait; the defaults suit a node, tests shorten them."""

    base: float = 1.0
    cap: float = 30.0
    jitter: float = 1.0
    invalid_poll: float = 5.0  # an invalid config is fetched again this often: someone is fixing it


def acquire_config(
    find: Callable[[], ConfigRef | None],
    fetch: Callable[[str], bytes],
    log: Log,
    *,
    policy: AcquirePolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    max_attempts: int | None = None,
) -> Acquired:
    """Loop until ``find`` yields a config that validates; ``max_attempts`` exists for tests."""
    policy = policy or AcquirePolicy()
    attempt = 0
    last_problem = ""
    while True:
        attempt += 1
        delay = backoff_delay(attempt, base=policy.base, cap=policy.cap, jitter=policy.jitter)
        try:
            ref = find()
            if ref is None:
                problem = "no machine config offered by this platform's sources yet"
            else:
                data = ref.resolve(fetch)
                try:
                    config = loads(data)
                except ConfigError as err:
                    problem = f"the machine config from {ref.source} is invalid:\n{err}"
                    delay = policy.invalid_poll
                    usable = without_kubernetes(data, err)
                    if usable is not None:
                        log(f"{problem}\nconfig: only its Kubernetes settings are wrong: the node comes up "
                            "without Kubernetes; fix them and reboot")  # fmt: skip
                        return Acquired(
                            usable[0], usable[1], ref.source, attempt, kubernetes_problem=str(err)
                        )
                else:
                    log(f"config: {len(data)} bytes from {ref.source}, valid (attempt {attempt})")
                    return Acquired(config, data, ref.source, attempt)
        except Exception as exc:  # any source failure is retried: the node must not die here
            problem = f"config source failed: {exc}"
        if max_attempts is not None and attempt >= max_attempts:
            raise TimeoutError(f"no valid machine config after {attempt} attempts: {problem}")
        if problem != last_problem:
            log(problem)
            last_problem = problem
        log(f"config: waiting {delay:.1f} s before attempt {attempt + 1}")
        sleep(delay)
