"""Sandboxed execution of model-written Python: the `python` tool of llm_jax/inference/tools.py.

`run_python` executes model-written code, so it is a security boundary. Python cannot be confined from inside
(ctypes, `/proc`, ...), so the code is not filtered; the operating system confines it, in layers. The active
layer is `sandbox_kind()`: the strongest one that works here, or the one named by `LLM_JAX_SANDBOX`.

  rlimits  (always; the whole sandbox where namespaces are not available): a separate process in its own
           session, an empty environment (PATH, LANG, HOME, PYTHONIOENCODING only), stdin from /dev/null, a fresh
           temporary working directory removed afterwards, no new privileges (setuid binaries do not elevate),
           `python -I -S` (stdlib only; a virtualenv's packages are not imported), and limits on CPU time
           (timeout + 1 s), address space (`memory_mb`), file size (1 MB, which also caps the output), processes
           (16), open files (64) and core dumps (0). The host enforces the wall-clock timeout and SIGKILLs the
           process group. Resource exhaustion is all it stops: the program runs as the host user and can read,
           write and signal whatever that user can, use the network, and leave daemons behind (setsid); as root,
           RLIMIT_NPROC does not apply, so a fork bomb hits the whole host. Only for trusted code.
  unshare  (util-linux `unshare`; as a non-root user it needs unprivileged user namespaces): adds new network
           (a down loopback only), PID, mount, IPC and UTS namespaces and a private root filesystem, pivoted into
           with the host's root detached (a chroot could be escaped, this cannot): read-only /usr, /bin, /lib*,
           /etc/ld.so.cache and the Python installation; a minimal /dev (null, zero, full, random, urandom, shm);
           its own /proc; a 64 MB /tmp; the working directory /home/sandbox. Nothing else of the host exists
           there: no /etc/passwd, no resolver, no host process. A small init stays PID 1, so when the program
           exits or is killed everything it started dies with the namespace. As root, the program runs under a
           fresh random uid (no capability, owns no host file, and RLIMIT_NPROC counts only this run's
           processes); as a non-root user, as uid 1000 of a nested user namespace, without capabilities.
  bwrap    (bubblewrap, when installed; preferred): the same view, namespaces and uid built by bubblewrap (as root
           without a user namespace, which would map the program to host uid 0, then our drop to the random uid;
           as a non-root user with its user namespace and --disable-userns), plus --die-with-parent and
           --new-session. Its loopback is up, but only the sandbox's own.

`tests/test_tools.py` runs 49 hostile programs (escapes, fork bombs, kills, network, /proc, ...) against the
active layer; all pass under unshare and bwrap, and the ones rlimits cannot stop are skipped under it.

Not covered by any layer: CPU and memory are limited per process (a program may run 16 processes of `memory_mb`
each), there is no seccomp filter (the whole syscall surface is reachable, so kernel bugs are in scope), and the
working directory's disk use is bounded only by the timeout and the 1 MB per-file limit.
"""

from __future__ import annotations

import json
import math
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time


SANDBOX_KINDS = ("bwrap", "unshare", "rlimits")  # strongest first
SANDBOX_HOME = "/home/sandbox"
FILE_SIZE_LIMIT = 1 << 20
MAX_PROCESSES = 16
MAX_OPEN_FILES = 64
_SETUP_FAILED = 125  # the wrapper's exit status when it could not build the sandbox
_OUTPUT_TRUNCATED = "\n... [output truncated] ...\n"

# Runs first inside the sandbox, with the host's privileges: builds the private root (unshare layer), drops
# privileges, sets the limits and execs the program. Pure stdlib, run with `python -I -S -c`.
_WRAPPER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
# Flags a user namespace may not clear on a bind of a host mount (statvfs bit -> mount flag).
LOCKED = ((8, NOEXEC), (1024, 1024), (2048, 2048), (4096, 1 << 21))
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203, "s390x": 217}

def check(ret, what):
  if ret != 0:
    err = ctypes.get_errno()
    raise OSError(err, what + ": " + os.strerror(err))

def mount(src, dst, fstype=None, flags=0, data=None):
  enc = lambda s: None if s is None else s.encode()
  check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), "mount " + dst)

def bind(src, dst, flags):
  mount(src, dst, None, BIND)
  kept = sum(m for s, m in LOCKED if os.statvfs(src).f_flag & s)
  mount(None, dst, None, BIND | REMOUNT | flags | kept)

def build_root(root, plan):
  mount(None, "/", None, REC | PRIVATE)
  mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=1m,mode=755")
  for kind, src, dst in plan:
    path = root + dst
    if kind == "symlink":
      os.symlink(src, path)
      continue
    if kind == "ro" and not os.path.isdir(src):
      os.makedirs(os.path.dirname(path), exist_ok=True)
      open(path, "a").close()
    else:
      os.makedirs(path, exist_ok=True)
    if kind == "ro":
      bind(src, path, RDONLY | NOSUID | NODEV)
    elif kind == "rw":
      bind(src, path, NOSUID | NODEV)
    elif kind == "tmpfs":
      mount("tmpfs", path, "tmpfs", NOSUID | NODEV, "size=%d,mode=1777" % int(src))
    elif kind == "proc":
      mount("proc", path, "proc", NOSUID | NODEV | NOEXEC)
    elif kind == "dev":
      for name in ("null", "zero", "full", "random", "urandom"):
        open(path + "/" + name, "a").close()
        bind("/dev/" + name, path + "/" + name, NOSUID | NOEXEC)
      os.mkdir(path + "/shm")
      mount("tmpfs", path + "/shm", "tmpfs", NOSUID | NODEV | NOEXEC, "size=16m,mode=1777")
      for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink("/proc/self/fd/%d" % i, path + "/" + name)
      os.symlink("/proc/self/fd", path + "/fd")
  # Detach the host's root entirely: a chroot could be escaped, a pivoted-and-unmounted root cannot.
  os.chdir(root)
  check(libc.syscall(PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
  check(libc.umount2(b".", 2), "umount old root")  # MNT_DETACH
  os.chdir("/")
  mount(None, "/", None, REMOUNT | RDONLY | NOSUID | NODEV)
  libc.sethostname(b"sandbox", 7)

def in_initial_user_namespace():
  with open("/proc/self/uid_map") as f:
    return f.read().split() == ["0", "0", "4294967295"]

def drop_privileges(uid):
  if os.geteuid() != 0:
    return
  if in_initial_user_namespace():  # real root: become a throwaway uid, which clears every capability
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
  else:  # root of a user namespace: map ourselves to uid 1000 of a nested one; execve then drops capabilities
    check(libc.unshare(0x10000000), "unshare(CLONE_NEWUSER)")
    for name, text in (("setgroups", "deny"), ("uid_map", "1000 0 1"), ("gid_map", "1000 0 1")):
      with open("/proc/self/" + name, "w") as f:
        f.write(text)

try:
  os.umask(0o022)
  if cfg["pivot"]:
    build_root(cfg["root"], cfg["plan"])
  if cfg["uid"] is not None:
    drop_privileges(cfg["uid"])
  check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
  # Changing uid cleared the parent-death signal that unshare / bwrap set; the run must die with its monitor.
  check(libc.prctl(1, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
  for name, (soft, hard) in cfg["limits"].items():
    resource.setrlimit(getattr(resource, name), (soft, hard))
  os.chdir(cfg["cwd"])
except Exception as e:
  sys.stderr.write("sandbox setup failed: %s: %s\n" % (type(e).__name__, e))
  os._exit(cfg["setup_failed"])
child = os.fork() if cfg["pivot"] else 0
if child:
  # Stay PID 1 of the namespace, like bwrap's init, so the program gets ordinary signal semantics (PID 1 ignores
  # signals it has no handler for, even its own SIGKILL or alarm()). Reap orphans until the program exits, then
  # report its status the way bwrap does (128 + signal number); leaving PID 1 kills what is left.
  while True:
    pid, status = os.waitpid(-1, 0)
    if pid == child:
      os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
os.execve(cfg["python"], [cfg["python"], "-I", "-S", "-u", "main.py"], cfg["env"])
"""


def _interpreter() -> str:
  return os.path.realpath(sys.executable)


def _python_dirs() -> list[str]:
  """The installation the sandboxed interpreter needs (binary, shared library, stdlib), outside /usr. With -S a
  virtualenv's own prefix is not used, so only the base installation is bound."""
  dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
  dirs.add(os.path.dirname(os.path.dirname(_interpreter())))
  kept = []
  for d in sorted(dirs):
    if d in ("/", "") or d == "/usr" or d.startswith("/usr/") or any(d.startswith(k + "/") for k in kept):
      continue
    kept.append(d)
  return kept


def _mount_plan(work: str) -> list[tuple[str, str, str]]:
  """(kind, source, destination) steps that build the sandbox's root, shared by the unshare and bwrap layers."""
  plan = [("proc", "", "/proc"), ("dev", "", "/dev"), ("tmpfs", str(64 << 20), "/tmp"), ("ro", "/usr", "/usr")]
  for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
    if os.path.islink(d):
      plan.append(("symlink", os.readlink(d), d))
    elif os.path.isdir(d):
      plan.append(("ro", d, d))
  if os.path.isfile("/etc/ld.so.cache"):  # the dynamic loader's index; /etc itself (passwd, ...) stays out
    plan += [("dir", "", "/etc"), ("ro", "/etc/ld.so.cache", "/etc/ld.so.cache")]
  made = set()
  for prefix in _python_dirs() + [SANDBOX_HOME]:
    # bwrap would copy the host's modes for these parents (/root is 0700): make them traversable explicitly.
    parts = prefix.strip("/").split("/")
    for i in range(1, len(parts)):
      parent = "/" + "/".join(parts[:i])
      if parent not in made:
        made.add(parent)
        plan.append(("dir", "", parent))
    plan.append(("rw", work, prefix) if prefix == SANDBOX_HOME else ("ro", prefix, prefix))
  return plan


def _bwrap_args(plan: list[tuple[str, str, str]], as_root: bool) -> list[str]:
  args = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session", "--clearenv",
          "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
          "--hostname", "sandbox"]
  if as_root:  # no user namespace (it would map the sandbox to host uid 0); the wrapper drops to a throwaway uid
    args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
  else:
    args += ["--unshare-user", "--uid", "1000", "--gid", "1000", "--disable-userns"]
  flags = {"ro": "--ro-bind", "rw": "--bind", "symlink": "--symlink"}
  for kind, src, dst in plan:
    if kind in flags:
      args += [flags[kind], src, dst]
    elif kind == "dir":
      args += ["--perms", "0755", "--dir", dst]
    elif kind == "tmpfs":
      args += ["--perms", "1777", "--size", src, "--tmpfs", dst]
    else:  # proc, dev
      args += [f"--{kind}", dst]
  return args + ["--remount-ro", "/", "--chdir", SANDBOX_HOME, "--"]


def _throwaway_uid() -> int:
  # Unique per run (with overwhelming probability), so RLIMIT_NPROC counts only this run's processes and no host
  # file or process belongs to it.
  return random.SystemRandom().randrange(1_000_000_000, 2_000_000_000)


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
  """Waits for the child to exit without reaping it (so its pid, which is also the process group id, cannot be
  reused before the group is killed). Returns False on timeout."""
  deadline = time.monotonic() + timeout
  try:
    fd = os.pidfd_open(proc.pid)
  except (AttributeError, OSError):
    fd = None
  try:
    while True:
      if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
        return True
      left = deadline - time.monotonic()
      if left <= 0:
        return False
      if fd is not None:  # readable once the process has exited
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(left * 1000)
      else:
        time.sleep(min(left, 0.01))
  finally:
    if fd is not None:
      os.close(fd)


def _read_output(path: str, max_output: int) -> str:
  """The first and last characters of the output (the end of a traceback is what matters), without reading a
  large file into memory."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(4 * max_output + 4)
    if size <= len(head):
      text = head.decode("utf-8", errors="replace")
      if len(text) <= max_output:
        return text
      tail = text
    else:
      f.seek(max(0, size - 4 * max_output))
      tail = f.read().decode("utf-8", errors="replace")
  text = head.decode("utf-8", errors="replace")
  tail_chars = min(max_output // 2, 500)
  tail = tail[-tail_chars:] if tail_chars else ""
  if "\n" in tail[:-1]:  # start the tail at a line boundary
    tail = tail[tail.index("\n") + 1:]
  return text[:max(0, max_output - len(tail))] + _OUTPUT_TRUNCATED + tail


def _status_note(rc: int, kind: str, text: str, output_bytes: int, cpu_s: int, memory_mb: int) -> str | None:
  # bwrap's init and our PID 1 (unshare) report a signal as 128 + signo (a program's own exit(137) reads the same);
  # for the rlimits layer Popen reports -signo.
  signo = -rc if rc < 0 else rc - 128 if kind != "rlimits" and 128 < rc <= 128 + 64 else 0
  if signo:
    name = signal.Signals(signo).name if signo in signal.Signals._value2member_map_ else f"signal {signo}"
    hint = {signal.SIGXCPU: f"CPU time limit of {cpu_s} s exceeded",
            signal.SIGXFSZ: f"file size limit of {FILE_SIZE_LIMIT >> 20} MB exceeded",
            signal.SIGSEGV: "crashed (for example a stack overflow from deep recursion)",
            signal.SIGKILL: f"killed (the CPU time limit is {cpu_s} s, memory {memory_mb} MB)"}.get(signo, "killed")
    return f"error: {hint} ({name})"
  if rc == _SETUP_FAILED and text.startswith("sandbox setup failed"):
    return "error: the sandbox could not be set up"
  if rc != 0 and "MemoryError" in text[-300:]:
    return f"error: memory limit of {memory_mb} MB exceeded"
  if output_bytes >= FILE_SIZE_LIMIT:
    return f"error: output stopped at the {FILE_SIZE_LIMIT >> 20} MB limit"
  if rc != 0 and not text:
    return f"error: exited with status {rc}"
  return None


def _run_sandboxed(kind: str, code: str, timeout: float, memory_mb: int, max_output: int) -> str:
  as_root = os.geteuid() == 0
  cpu_s = int(math.ceil(timeout)) + 1
  limits = {"RLIMIT_CPU": (cpu_s, cpu_s + 1), "RLIMIT_AS": (memory_mb << 20,) * 2,
            "RLIMIT_FSIZE": (FILE_SIZE_LIMIT,) * 2, "RLIMIT_NPROC": (MAX_PROCESSES,) * 2,
            "RLIMIT_NOFILE": (MAX_OPEN_FILES,) * 2, "RLIMIT_CORE": (0, 0)}
  tmp = tempfile.mkdtemp(prefix="llm_jax_tool_")
  try:
    work, root, out_path = (os.path.join(tmp, name) for name in ("work", "root", "out"))
    os.mkdir(work)
    os.mkdir(root)
    with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as f:
      f.write(code)
    home = work if kind == "rlimits" else SANDBOX_HOME
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "PYTHONIOENCODING": "utf-8"}
    uid = None
    if kind != "rlimits" and as_root:
      uid = _throwaway_uid()
      os.chown(work, uid, uid)
    elif kind == "unshare":
      uid = 1000  # any value: drop_privileges maps a user namespace's root to uid 1000 of a nested namespace
    cfg = {"pivot": kind == "unshare", "root": root, "plan": _mount_plan(work), "uid": uid, "limits": limits,
           "cwd": home, "python": _interpreter(), "env": env,
           "setup_failed": _SETUP_FAILED}
    python = [_interpreter(), "-I", "-S", "-c", _WRAPPER, json.dumps(cfg)]
    if kind == "bwrap":
      cmd = _bwrap_args(cfg["plan"], as_root) + python
    elif kind == "unshare":
      cmd = [shutil.which("unshare") or "unshare", "--net", "--mount", "--pid", "--ipc", "--uts", "--fork",
             "--kill-child", "--propagation", "private"] + ([] if as_root else ["--user", "--map-root-user"])
      cmd += ["--"] + python
    else:
      cmd = python
    with open(out_path, "wb") as out:
      try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=tmp, start_new_session=True, close_fds=True)
      except OSError as e:
        return f"error: could not start the {kind} sandbox: {e}"
    try:
      finished = _wait(proc, timeout)
    finally:
      # The whole group, also when the program exited: background children in the rlimits layer (in the others
      # the namespace dies with its first process).
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except OSError:
        pass
      rc = proc.wait()
    text = _read_output(out_path, max_output)
    note = f"error: timed out after {float(timeout)} s" if not finished else \
        _status_note(rc, kind, text, os.path.getsize(out_path), cpu_s, memory_mb)
    if note:
      text += ("\n" if text and not text.endswith("\n") else "") + note
    return text
  finally:
    _remove(tmp)


def _remove(path: str) -> None:
  def make_writable(func, p, exc_info):  # the program may have chmod-ed its own files to 000
    try:
      os.chmod(os.path.dirname(p), 0o700)
      os.chmod(p, 0o700)
      func(p)
    except OSError:
      pass
  shutil.rmtree(path, onerror=make_writable)


_available: dict[str, bool] = {}
_available_lock = threading.Lock()


def _works(kind: str) -> bool:
  with _available_lock:
    if kind not in _available:
      needs = {"bwrap": "bwrap", "unshare": "unshare"}.get(kind)
      ok = sys.platform.startswith("linux") or kind == "rlimits"
      ok = ok and (needs is None or shutil.which(needs) is not None)
      _available[kind] = ok and _run_sandboxed(kind, "print(6 * 7)", 20.0, 256, 200) == "42\n"
    return _available[kind]


def available_sandboxes() -> list[str]:
  """The sandbox kinds that run a trivial program on this machine, strongest first (probed once per process)."""
  return [kind for kind in SANDBOX_KINDS if _works(kind)]


def sandbox_kind() -> str:
  """The layer `run_python` uses: `LLM_JAX_SANDBOX` (bwrap, unshare or rlimits) if set, else the strongest one
  that works here."""
  forced = os.environ.get("LLM_JAX_SANDBOX", "").strip()
  if forced:
    if forced not in SANDBOX_KINDS:
      raise ValueError(f"LLM_JAX_SANDBOX={forced!r}: expected one of {', '.join(SANDBOX_KINDS)}")
    return forced
  return next((kind for kind in SANDBOX_KINDS if _works(kind)), "rlimits")


def run_python(code: str, timeout: float = 5.0, *, memory_mb: int = 256, max_output: int = 2000) -> str:
  """Runs `code` with this interpreter (stdlib only) in the sandbox described in the module docstring and returns
  what the model sees: stdout and stderr interleaved, cut to `max_output` characters around a truncation marker
  (keeping the end, where a traceback's last line is), followed by an "error: ..." line when the run timed out,
  was killed or crashed. Never raises for anything the code does."""
  try:
    kind = sandbox_kind()
    if not isinstance(code, str):
      return "error: the code must be a string"
    return _run_sandboxed(kind, code, float(timeout), int(memory_mb), int(max_output))
  except Exception as e:  # a host-side failure (disk full, bad setting) is still tool output
    return f"error: {type(e).__name__}: {e}"
