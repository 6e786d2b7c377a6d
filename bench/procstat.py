"""Memory and CPU of a process and its live descendants, read from /proc."""

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # the command name may hold spaces and parentheses: split after the last ')'
    return text[text.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """`pid` and every live descendant (nginx and LiteLLM run workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of each process plus what its reaped children used."""
    total = 0
    for pid in pids:
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        total += sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pids: list[int]) -> float:
    return sum(_status_kb(p, "VmRSS:") for p in pids) / 1024


def hwm_mb(pid: int) -> float:
    """The kernel's own peak RSS of one process (exact, unlike sampling)."""
    return _status_kb(pid, "VmHWM:") / 1024


class Sampler:
    """Samples a process tree's RSS; remembers the peak since the last reset."""

    def __init__(self, pid: int):
        self.pid = pid
        self.pids = tree(pid)
        self.peak = 0.0
        self.last = 0.0

    def sample(self, refresh_tree: bool = False) -> float:
        if refresh_tree:
            self.pids = tree(self.pid)
        self.last = rss_mb(self.pids)
        self.peak = max(self.peak, self.last)
        return self.last

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def reset_peak(self) -> None:
        self.peak = self.last
