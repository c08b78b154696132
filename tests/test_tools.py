"""Tools a chat model calls: the AST-restricted calculator, the sandboxed python runner (with 49 hostile programs),
BM25 retrieval and dispatch.

The hostile programs run concurrently, once per test process, on the sandbox `tools.sandbox_kind()` picks (bwrap, else
unshare); force another with e.g. `LLM_JAX_SANDBOX=unshare pytest tests/test_tools.py`. Each program asserts what
it was stopped from (reading, writing, signalling, connecting) and the host's state is checked afterwards. The
rlimits-only fallback cannot stop most of them (the program runs as the host user, sees the host's files, network
and processes), so under it only the resource-limit programs run and the rest are skipped, naming the layer they
need.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import shutil
import socket
import string
import subprocess
import sys
import threading
import time
import uuid

import pytest

from llm_jax.inference import sandbox, tools

HANG_TIMEOUT = 2.0  # programs that never finish on their own
RUN_TIMEOUT = 15.0  # programs that finish at once; generous so a loaded CI machine does not time them out
NEEDS_NAMESPACES = "needs the 'unshare' or 'bwrap' sandbox: under 'rlimits' the program runs as the host user"


# --------------------------------------------------------------------------------------------------------------------
# calculator

@pytest.mark.parametrize("expression, expected", [
    ("347*29", "10063"), ("2+3*4", "14"), ("(2+3)*4", "20"), ("2**3**2", "512"), ("-5+2", "-3"), ("-(3)**2", "-9"),
    ("--4", "4"), ("0.1+0.2", "0.3"), ("6/3", "2"), ("1/3", "0.3333333333"), ("2**0.5", "1.414213562"),
    ("2**-2", "0.25"), ("7//2", "3"), ("-7%3", "2"), ("7.5%2", "1.5"), ("  12 * 12 ", "144"), ("1e3", "1000"),
    ("1e-7", "1e-07"), ("10**20/1", "1e+20"), ("2**64", "18446744073709551616"),
])
def test_calculator_results(expression, expected):
  assert tools.calculator(expression) == expected


def test_calculator_big_integers_are_exact_up_to_the_digit_limit():
  assert tools.calculator("10**9999") == "1" + "0" * 9999  # above Python's default int->str limit of 4300 digits
  assert tools.calculator("10**4300*10**4300") == "1" + "0" * 8600


@pytest.mark.parametrize("expression", [
    "__import__('os').system('true')", "(1).real", "abs(-1)", "'a'*3", "1<2", "[1][0]", "(lambda: 1)()", "x",
    "True+1", "1j", "not 1", "~1", "1 if 1 else 2", "2×3", "2 x 3", "1,000", "{1: 2}", "f'{1}'", "...",
    "2**10**10", "9**9**9", "(10**100)**100", "10**100000", "1e308*10", "10**9999/3", "9" * 201, "1/0", "5%0",
    "5//0", "0**-1", "(-8)**(1/3)", "", "   ", "1+", "(1", "1 2", "\x00",
])
def test_calculator_refuses_with_an_error_text_quickly(expression):
  start = time.monotonic()
  result = tools.calculator(expression)
  assert result.startswith("error:"), (expression, result)
  assert time.monotonic() - start < 0.5


def test_calculator_error_messages():
  assert tools.calculator("1/0") == "error: division by zero"
  assert tools.calculator("open('x')") == "error: only numbers and + - * / // % ** ( ) are allowed"
  assert "200" in tools.calculator("1+" * 101 + "1")
  assert tools.calculator(None).startswith("error:")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------------
# run_python: ordinary programs

def test_run_python_basics():
  assert tools.run_python('print("strawberry".count("r"))') == "3\n"
  assert tools.run_python("import math, collections\nprint(math.factorial(10), collections.Counter('aab')['a'])") \
      == "3628800 2\n"
  assert tools.run_python("x = 1\nprint('é ✓')") == "é ✓\n"
  assert tools.run_python("x = 1") == ""


def test_run_python_reports_exceptions_and_syntax_errors():
  out = tools.run_python("print('before')\n1/0")
  assert out.startswith("before\n") and out.rstrip().endswith("ZeroDivisionError: division by zero")
  out = tools.run_python("def f(:\n  pass")
  assert "SyntaxError" in out
  assert tools.run_python("import sys; sys.exit(3)") == "error: exited with status 3"


def test_run_python_timeout_keeps_the_output_so_far():
  start = time.monotonic()
  out = tools.run_python("import time\nprint('started')\ntime.sleep(100)", timeout=1)
  assert out == "started\nerror: timed out after 1.0 s"
  assert time.monotonic() - start < 4


def test_run_python_truncates_but_keeps_the_final_exception_line():
  out = tools.run_python("print('a' * 5000)\nraise ValueError('boom')", max_output=300)
  assert "[output truncated]" in out and out.rstrip().endswith("ValueError: boom")
  assert len(out) <= 300 + len("\n... [output truncated] ...\n") and out.startswith("aaaa")


def test_sandbox_kind_is_validated_and_forcible(monkeypatch):
  assert "rlimits" in tools.available_sandboxes()
  monkeypatch.setenv("LLM_JAX_SANDBOX", "rlimits")
  assert tools.sandbox_kind() == "rlimits" and tools.run_python("print(2)") == "2\n"
  monkeypatch.setenv("LLM_JAX_SANDBOX", "chroot")
  with pytest.raises(ValueError, match="bwrap, unshare, rlimits"):
    tools.sandbox_kind()
  assert tools.run_python("print(2)").startswith("error: ValueError")


def test_our_namespace_sandbox_works_wherever_the_kernel_allows_namespaces():
  # Guards against silently falling back to rlimits (and skipping the hostile tests) in CI.
  if not sys.platform.startswith("linux") or not shutil.which("unshare"):
    pytest.skip("no util-linux unshare here")
  args = ["unshare", "--net", "--mount", "--pid", "--fork", "true"]
  if os.geteuid() != 0:
    args[1:1] = ["--user", "--map-root-user"]
  if subprocess.run(args, capture_output=True).returncode != 0:
    pytest.skip("this kernel or container does not allow new namespaces")
  assert "unshare" in tools.available_sandboxes()
  assert tools.sandbox_kind() in ("bwrap", "unshare") or os.environ.get("LLM_JAX_SANDBOX") == "rlimits"


# --------------------------------------------------------------------------------------------------------------------
# run_python: hostile programs

@dataclasses.dataclass
class Hostile:
  name: str
  code: str  # a string.Template: $SENTINEL, $SENTINEL_DIR, $PWNED, $PORT, $CANARY, $MARK, $TAG
  check: object  # check(result, ctx) asserts what the program was stopped from
  hangs: bool = False  # never finishes on its own: must be stopped at the timeout
  needs_namespaces: bool = True


@dataclasses.dataclass
class Result:
  out: str
  elapsed: float
  timeout: float


def _no_leak(r, ctx):
  assert ctx.secret not in r.out and ctx.passwd_root_line not in r.out and ctx.env_secret not in r.out, r.out


def _not_created(r, ctx, name):
  assert not os.path.exists(ctx.pwned(name)), f"{name} created {ctx.pwned(name)} on the host"


def _stopped(r, ctx):
  assert f"error: timed out after {r.timeout} s" in r.out or "error: CPU time limit" in r.out, r.out[-300:]
  assert r.elapsed < r.timeout + 3, r.elapsed


def _lacks(*needles):
  def check(r, ctx):
    for needle in needles:
      assert needle not in r.out, r.out
    _no_leak(r, ctx)
  return check


def _has(*needles):
  def check(r, ctx):
    assert any(n in r.out for n in needles), r.out[-500:]
    _no_leak(r, ctx)
  return check


def _all(*checks):
  def check(r, ctx):
    for c in checks:
      c(r, ctx)
  return check


def _pwned(name):
  return lambda r, ctx: _not_created(r, ctx, name)


def _sentinel_intact(r, ctx):
  assert ctx.sentinel_state() == ctx.sentinel_before, "the sentinel directory outside the sandbox changed"


def _canary_alive(r, ctx):
  assert ctx.canary.poll() is None, "a host process was killed"


def _only_exception_names(r, ctx):
  assert r.out.split() and all(word.endswith("Error") for word in r.out.split()), r.out
  _no_leak(r, ctx)


def _no_host_root_entries(r, ctx):
  lines = set(r.out.splitlines())
  assert not lines & ctx.host_only_root_entries, lines & ctx.host_only_root_entries
  assert "secret.txt" not in r.out
  _no_leak(r, ctx)


def _no_host_home_entries(r, ctx):
  listed = r.out.replace("'", " ").replace(",", " ").replace("[", " ").replace("]", " ").split()
  assert not set(listed) & ctx.host_home_entries, set(listed) & ctx.host_home_entries
  assert os.path.exists(ctx.sentinel)


def _server_untouched(r, ctx):
  assert "CONNECTED" not in r.out
  assert ctx.connections == [], "the host's server on 127.0.0.1 saw a connection"


def _env_clean(r, ctx):
  _no_leak(r, ctx)
  first = r.out.splitlines()[0]
  assert set(json.loads(first)) == {"PATH", "LANG", "HOME", "PYTHONIOENCODING"}, first


def _few_processes(r, ctx):
  pids = json.loads(r.out.splitlines()[0])
  assert ctx.canary.pid not in pids and os.getpid() not in pids and len(pids) <= 3, pids


def _daemon_gone(r, ctx):
  _not_created(r, ctx, "setsid_daemon")
  assert not ctx.processes_with_mark(), "a daemon outlived the run"


def _stdlib_unchanged(r, ctx):
  assert "WRITABLE" not in r.out and "CREATED" not in r.out, r.out
  leftover = os.path.join(os.path.dirname(os.__file__), f"pwned_{ctx.tag}.py")
  assert not os.path.exists(leftover)


HOSTILE = [
    # reading the host's files
    Hostile("read_etc_passwd", 'print(open("/etc/passwd").read())', _has("FileNotFoundError")),
    Hostile("read_secrets", 'for p in ["/etc/shadow", "/root/.ssh/id_rsa", "/root/.bash_history", "/root/.bashrc"]:\n'
            '  try:\n    print(open(p).read())\n  except Exception as e:\n    print(type(e).__name__)',
            _only_exception_names),
    Hostile("read_sentinel", 'print(open("$SENTINEL").read())', _has("FileNotFoundError")),
    Hostile("read_sentinel_via_proc_root", 'for r in ["/proc/1/root", "/proc/self/root", "/proc/self/cwd/../../.."]:\n'
            '  try:\n    print(open(r + "$SENTINEL").read())\n  except Exception as e:\n    print(type(e).__name__)',
            _only_exception_names),
    Hostile("list_sentinel_dir", 'import os\nprint(os.listdir("$SENTINEL_DIR"))', _lacks("secret.txt")),
    Hostile("symlink_escape", 'import os\nos.symlink("/etc", "etc_link")\nos.symlink("$SENTINEL_DIR", "s_link")\n'
            'for p in ["etc_link/passwd", "s_link/secret.txt"]:\n'
            '  try:\n    print(open(p).read())\n  except Exception as e:\n    print(type(e).__name__)\n'
            'try:\n  os.link("$SENTINEL", "hard")\nexcept Exception as e:\n  print(type(e).__name__)',
            _only_exception_names),
    Hostile("subprocess_ls", 'import subprocess\n'
            'r = subprocess.run(["ls", "-a", "/", "/tmp", "$SENTINEL_DIR"], capture_output=True, text=True)\n'
            'print(r.stdout + r.stderr)', _no_host_root_entries),
    # Deletes every entry of /root and of its home it can see, except the interpreter's own installation
    # (sys.prefix, bound in read-only where the sandbox sees /root at all): walking its ~100k files to fail on
    # each took longer than the time limit on a loaded CI machine; tamper_with_python attacks it instead.
    Hostile("list_and_delete_home", 'import os, shutil, sys\nhome = os.path.expanduser("~")\n'
            'print(os.listdir(home), os.listdir("/root"))\n'
            'for top in ("/root", home):\n'
            '  for name in os.listdir(top):\n'
            '    path = os.path.join(top, name)\n'
            '    if not sys.prefix.startswith(path):\n'
            '      shutil.rmtree(path, ignore_errors=True)\n'
            'os.remove("$SENTINEL")', _all(_no_host_home_entries, _has("FileNotFoundError"))),
    Hostile("dev_mem_and_disks", 'for p in ["/dev/mem", "/dev/kmem", "/dev/port", "/dev/sda", "/dev/vda", '
            '"/dev/nvme0n1", "/dev/kmsg"]:\n'
            '  try:\n    print("READ", p, len(open(p, "rb").read(16)))\n  except Exception as e:\n'
            '    print(type(e).__name__)', _only_exception_names),
    Hostile("proc_environ_scan", 'import os\nfor pid in os.listdir("/proc"):\n  if pid.isdigit():\n'
            '    try:\n      print(pid, open(f"/proc/{pid}/environ", "rb").read())\n'
            '    except Exception as e:\n      print(pid, type(e).__name__)', _lacks("LLM_JAX_TEST_SECRET")),
    Hostile("see_host_processes", 'import os\nprint([int(p) for p in os.listdir("/proc") if p.isdigit()])',
            _few_processes),
    # writing outside the working directory
    Hostile("write_sentinel", 'import os\ntry:\n  open("$SENTINEL", "w").write("overwritten")\nexcept Exception as e:\n'
            '  print(type(e).__name__)\nos.makedirs("$SENTINEL_DIR", exist_ok=True)\n'
            'open("$SENTINEL_DIR/new.txt", "w").write("x")', _sentinel_intact),
    Hostile("write_host_tmp", 'open("$PWNED", "w").write("pwned")\nprint("wrote")', _pwned("write_host_tmp")),
    Hostile("chmod_chown_outside", 'import os, sys\n'
            'for f in ["$SENTINEL", "/usr/bin/env", sys.executable, "/"]:\n'
            '  try:\n    st = os.stat(f)\n  except Exception as e:\n    print(type(e).__name__)\n    continue\n'
            '  for op in (lambda: os.chmod(f, st.st_mode & 0o7777), lambda: os.chown(f, st.st_uid, st.st_gid)):\n'
            '    try:\n      op()\n      print("CHANGED", f)\n    except Exception as e:\n'
            '      print(type(e).__name__)', _all(_lacks("CHANGED"), _sentinel_intact)),
    Hostile("tamper_with_python", 'import os, sys\nfor p in [sys.executable, os.__file__]:\n'
            '  try:\n    open(p, "ab")\n    print("WRITABLE", p)\n  except Exception as e:\n'
            '    print(type(e).__name__)\ntry:\n'
            '  open(os.path.join(os.path.dirname(os.__file__), "pwned_$TAG.py"), "w")\n  print("CREATED")\n'
            'except Exception as e:\n  print(type(e).__name__)', _stdlib_unchanged),
    Hostile("write_proc_sys", 'for p, v in [("/proc/sys/kernel/hostname", "pwned"), ("/proc/sys/vm/drop_caches", "1"), '
            '("/proc/sysrq-trigger", "h"), ("/proc/sys/kernel/core_pattern", "|/bin/sh")]:\n'
            '  try:\n    open(p, "w").write(v)\n    print("WROTE", p)\n  except Exception as e:\n'
            '    print(type(e).__name__)',
            lambda r, ctx: (_only_exception_names(r, ctx), ctx.check_host_settings())),
    Hostile("mount", 'import os\nos.system("mount -t tmpfs none /tmp 2>&1; echo mount=$$?")\n'
            'os.system("mount -t proc proc /proc 2>&1; echo proc=$$?")',
            _all(_has("mount=32", "mount=1"), lambda r, ctx: ctx.check_host_settings())),
    Hostile("ctypes_unshare_mount", 'import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n'
            'print("unshare", libc.unshare(0x00020000 | 0x40000000))\n'
            'print("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))\n'
            'print("chroot", libc.chroot(b"/tmp"))', _has("unshare -1\nmount -1\nchroot -1")),
    Hostile("chroot", 'import os\ntry:\n  os.chroot("/tmp")\n  print("CHROOTED")\nexcept Exception as e:\n'
            '  print(type(e).__name__)', _all(_lacks("CHROOTED"), _has("PermissionError"))),
    Hostile("raise_rlimits", 'import resource\n'
            'for name in ("RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_CPU", "RLIMIT_FSIZE"):\n'
            '  r = getattr(resource, name)\n  try:\n'
            '    resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n'
            '    print("RAISED", name)\n  except (ValueError, OSError) as e:\n    print(type(e).__name__)\n'
            'x = b"x" * 10**9\nprint("ALLOCATED")', _all(_lacks("RAISED", "ALLOCATED"), _has("MemoryError"))),
    # running other programs
    Hostile("os_system", 'import os\nos.system("cat $SENTINEL /etc/passwd; touch $PWNED")',
            _all(_lacks(), _pwned("os_system"))),
    Hostile("ctypes_system", 'import ctypes\nctypes.CDLL(None).system(b"touch $PWNED; cat $SENTINEL")',
            _all(_lacks(), _pwned("ctypes_system"))),
    Hostile("importlib_os", 'import importlib\nimportlib.import_module("os").system("touch $PWNED")',
            _pwned("importlib_os")),
    Hostile("builtins_import", 'import builtins\n'
            'builtins.__import__("subprocess").run(["sh", "-c", "cat $SENTINEL; touch $PWNED"])\n'
            '__import__("os").system("cat /etc/passwd")', _all(_lacks(), _pwned("builtins_import"))),
    Hostile("os_fork", 'import os\npid = os.fork()\nif pid == 0:\n  open("$PWNED", "w").write("child")\n  os._exit(0)\n'
            'os.waitpid(pid, 0)\nprint("forked")', _all(_has("forked"), _pwned("os_fork"))),
    Hostile("multiprocessing", 'import multiprocessing as mp\n'
            'def f():\n  open("$PWNED", "w").write("mp")\n'
            'if __name__ == "__main__":\n  p = mp.Process(target=f)\n  p.start()\n  p.join()\n'
            '  print("exit", p.exitcode)', _pwned("multiprocessing")),
    Hostile("setsid_daemon", 'import os, time\nif os.fork() == 0:\n  os.setsid()\n  if os.fork() == 0:\n'
            '    os.execv("/bin/sh", ["sh", "-c", "sleep 3; touch $PWNED; sleep 30 # $MARK"])\n  os._exit(0)\n'
            'time.sleep(0.3)\nprint("parent done")', _all(_has("parent done"), _daemon_gone)),
    Hostile("background_thread", 'import itertools, threading\n'
            'def w():\n  for i in itertools.count():\n    open(f"f{i % 10}", "w").write("x")\n'
            '    open("$PWNED", "w").write("thread")\n'
            'threading.Thread(target=w).start()', _all(_stopped, _pwned("background_thread")), hangs=True),
    Hostile("fork_bomb", 'import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n    pass',
            _stopped, hangs=True),
    Hostile("thread_bomb", 'import threading, time\nwhile True:\n'
            '  threading.Thread(target=time.sleep, args=(100,), daemon=True).start()',
            _has("can't start new thread", "error:")),
    # signals and other processes
    Hostile("kill_parent", 'import os\nos.kill(os.getppid(), 9)\nprint("still here")', _canary_alive),
    Hostile("kill_everything", 'import os\nos.system("kill -9 -1")\nos.kill(-1, 9)', _canary_alive),
    Hostile("kill_canary", 'import os\nos.kill($CANARY, 9)', _all(_has("ProcessLookupError"), _canary_alive)),
    Hostile("killpg_self", 'import os\nos.killpg(0, 9)', _has("SIGKILL"), needs_namespaces=False),
    Hostile("ptrace_and_proc_mem", 'import ctypes, os\n'
            'pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]\n'
            'for pid in pids + [str(os.getppid()), "$CANARY"]:\n'
            '  try:\n    open(f"/proc/{pid}/mem", "rb")\n    print("OPENED", pid)\n  except Exception as e:\n'
            '    print(type(e).__name__)\n'
            'print("ptrace", ctypes.CDLL(None).ptrace(16, $CANARY, 0, 0))',
            _all(_lacks("OPENED"), _has("ptrace -1"), _canary_alive)),
    Hostile("ignore_signals_and_spin", 'import signal\n'
            'for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGXCPU):\n'
            '  signal.signal(s, signal.SIG_IGN)\nwhile True:\n  pass', _stopped, hangs=True, needs_namespaces=False),
    # network
    Hostile("connect_to_host_server", 'import socket\ntry:\n'
            '  s = socket.create_connection(("127.0.0.1", $PORT), timeout=1)\n  s.sendall(b"pwned")\n'
            '  print("CONNECTED")\nexcept Exception as e:\n  print(type(e).__name__, e)', _server_untouched),
    Hostile("dns_and_udp", 'import socket\ntry:\n  print(socket.getaddrinfo("example.com", 80)[0][4])\n'
            'except Exception as e:\n  print("dns", type(e).__name__)\ntry:\n'
            '  socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))\n  print("SENT")\n'
            'except Exception as e:\n  print("udp", type(e).__name__, e)',
            _all(_lacks("SENT"), _has("dns gaierror"), _has("Network is unreachable"))),
    Hostile("raw_socket", 'import socket\ntry:\n  socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n'
            '  print("RAW")\nexcept Exception as e:\n  print(type(e).__name__)', _only_exception_names),
    # environment
    Hostile("environment_snooping", 'import json, os\nprint(json.dumps(dict(os.environ)))\n'
            'print(open("/proc/self/environ", "rb").read())', _env_clean, needs_namespaces=False),
    # resources
    Hostile("allocate_10gb", 'x = b"x" * 10**10', _has("MemoryError"), needs_namespaces=False),
    Hostile("memory_growth", 'chunks = []\nwhile True:\n  chunks.append(bytearray(10**6))', _has("MemoryError"),
            needs_namespaces=False),
    Hostile("mmap_10gb", 'import mmap\nm = mmap.mmap(-1, 10**10)\nm[-1] = 1\nprint("MAPPED")',
            _all(_lacks("MAPPED"), _has("Error")), needs_namespaces=False),
    Hostile("infinite_loop", 'while True:\n  pass', _stopped, hangs=True, needs_namespaces=False),
    Hostile("sleep_forever", 'import time\ntime.sleep(10**6)', _stopped, hangs=True, needs_namespaces=False),
    Hostile("huge_print", 'print("x" * 10**8)',
            lambda r, ctx: _assert_truncated(r.out), needs_namespaces=False),
    Hostile("endless_print", 'while True:\n  print("y" * 1000)',
            lambda r, ctx: _assert_truncated(r.out), hangs=True, needs_namespaces=False),
    Hostile("huge_file", 'with open("big", "wb") as f:\n  while True:\n    f.write(b"0" * 10**6)',
            _has("File too large"), needs_namespaces=False),
    Hostile("deep_recursion", 'import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n  return f(n + 1)\nf(0)',
            _has("error: crashed", "RecursionError", "MemoryError", "SystemError"), needs_namespaces=False),
]


def _assert_truncated(out):
  assert "[output truncated]" in out, out[-200:]
  assert len(out) <= 2000 + 200, len(out)


class _Server:
  """A listening TCP server on the host's loopback that records every connection it accepts."""

  def __init__(self):
    self.sock = socket.socket()
    self.sock.bind(("127.0.0.1", 0))
    self.sock.listen(8)
    self.sock.settimeout(0.2)
    self.port = self.sock.getsockname()[1]
    self.connections: list = []
    self.done = threading.Event()
    self.thread = threading.Thread(target=self._serve, daemon=True)
    self.thread.start()

  def _serve(self):
    while not self.done.is_set():
      try:
        conn, addr = self.sock.accept()
      except OSError:
        continue
      self.connections.append(addr)
      conn.close()

  def close(self):
    self.done.set()
    self.thread.join()
    self.sock.close()


def _processes_with(mark: str) -> list[int]:
  pids = []
  for pid in os.listdir("/proc"):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        if mark.encode() in f.read():
          pids.append(int(pid))
    except (OSError, ValueError):
      pass
  return pids


def _host_settings():
  with open("/proc/self/mountinfo") as f:
    mounts = f.read()
  with open("/proc/sys/kernel/core_pattern") as f:
    core_pattern = f.read()
  return socket.gethostname(), mounts, core_pattern


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
  """Runs every hostile program once, concurrently, and yields (kind, results, ctx)."""
  kind = tools.sandbox_kind()
  sentinel_dir = tmp_path_factory.mktemp("sentinel")
  sentinel = sentinel_dir / "secret.txt"
  tag = uuid.uuid4().hex[:12]
  secret = f"SENTINEL-{tag}"
  sentinel.write_text(secret)

  def sentinel_state():
    return sorted((p.name, p.read_bytes(), p.stat().st_mode, p.stat().st_uid) for p in sentinel_dir.iterdir())

  with open("/etc/passwd") as f:
    passwd_root_line = next(line for line in f if line.startswith("root:")).strip()
  host_home = os.path.expanduser("~")
  bound = {d.strip("/").split("/")[0] for d in sandbox._python_dirs()}
  ctx = type("Ctx", (), {})()
  ctx.__dict__.update(
      secret=secret, sentinel=str(sentinel), tag=tag, env_secret=f"env-secret-{tag}",
      passwd_root_line=passwd_root_line, sentinel_state=sentinel_state, sentinel_before=sentinel_state(),
      pwned=lambda name: f"/tmp/pwned_{tag}_{name}", mark=f"llm-jax-daemon-{tag}",
      host_home_entries={n for n in os.listdir(host_home) if len(n) > 3} - bound - {".pyenv"},
      host_only_root_entries=set(os.listdir("/")) - bound - {
          "bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "tmp", "home", "."})
  ctx.processes_with_mark = lambda: _processes_with(ctx.mark)
  settings_before = _host_settings()

  def check_host_settings():
    assert _host_settings() == settings_before, "hostname, mounts or core_pattern of the host changed"
  ctx.check_host_settings = check_host_settings

  server = _Server()
  ctx.connections = server.connections
  ctx.canary = canary = subprocess.Popen(["sleep", "120"])
  programs = [h for h in HOSTILE if kind != "rlimits" or not h.needs_namespaces]

  def run(h):
    code = string.Template(h.code).safe_substitute(
        SENTINEL=sentinel, SENTINEL_DIR=sentinel_dir, PWNED=ctx.pwned(h.name), PORT=server.port,
        CANARY=canary.pid, MARK=ctx.mark, TAG=tag)
    timeout = HANG_TIMEOUT if h.hangs else RUN_TIMEOUT
    start = time.monotonic()
    out = tools.run_python(code, timeout=timeout)
    return h.name, Result(out, time.monotonic() - start, timeout), time.monotonic()

  try:
    with pytest.MonkeyPatch.context() as mp:
      mp.setenv("LLM_JAX_TEST_SECRET", ctx.env_secret)
      # Programs that hang first, so the whole batch takes about one HANG_TIMEOUT.
      ordered = sorted(programs, key=lambda h: not h.hangs)
      with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(run, ordered))
    results = {name: result for name, result, _ in done}
    # The daemon sleeps 3 s after its parent returned, then writes; give it time to (fail to) do so.
    daemon_end = max((end for name, _, end in done if name == "setsid_daemon"), default=0)
    time.sleep(max(0.0, daemon_end + 4 - time.monotonic()))
    yield kind, results, ctx
  finally:
    server.close()
    canary.kill()
    canary.wait()
    for pid in _processes_with(ctx.mark):  # only if a sandbox failed: do not leave the daemon running
      try:
        os.kill(pid, 9)
      except OSError:
        pass
    for h in HOSTILE:
      if os.path.exists(ctx.pwned(h.name)):
        os.remove(ctx.pwned(h.name))
    leftover = os.path.join(os.path.dirname(os.__file__), f"pwned_{tag}.py")
    if os.path.exists(leftover):
      os.remove(leftover)


def test_there_are_at_least_30_hostile_programs():
  assert len(HOSTILE) >= 30 and len({h.name for h in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize("program", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_program_is_stopped_or_harmless(hostile, program):
  kind, results, ctx = hostile
  if program.name not in results:
    pytest.skip(NEEDS_NAMESPACES)
  result = results[program.name]
  assert not result.out.startswith("error: could not start"), result.out
  program.check(result, ctx)
  if not program.hangs:
    assert result.elapsed < RUN_TIMEOUT, result.elapsed


def test_host_is_healthy_after_the_hostile_programs(hostile):
  kind, results, ctx = hostile
  assert ctx.sentinel_state() == ctx.sentinel_before
  assert ctx.canary.poll() is None
  assert ctx.connections == []
  if kind != "rlimits":
    ctx.check_host_settings()
    assert not ctx.processes_with_mark()
    assert not [h.name for h in HOSTILE if os.path.exists(ctx.pwned(h.name))]
  assert subprocess.run(["true"]).returncode == 0  # the host can still fork
  assert tools.run_python("print(1+1)") == "2\n"


# --------------------------------------------------------------------------------------------------------------------
# retrieval

DOCS = [
    "the cat sat on the mat",
    "dogs chase cats around the garden",
    {"text": "quantum chromodynamics explains how quarks bind", "title": "Physics", "id": "qcd"},
    {"text": "a cat and a dog share the mat " + "filler " * 100, "title": "Pets"},
]


def _bm25_reference(docs, query, k1=1.5, b=0.75):
  import re
  toks = [re.findall(r"\w+", (d.get("title", "") + " " + d["text"] if isinstance(d, dict) else " " + d).lower())
          for d in docs]
  avg = sum(map(len, toks)) / len(toks)
  scores = []
  for t in toks:
    s = 0.0
    for term in set(re.findall(r"\w+", query.lower())):
      n = sum(term in u for u in toks)
      tf = t.count(term)
      if tf:
        s += math.log(1 + (len(toks) - n + 0.5) / (n + 0.5)) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(t) / avg))
    scores.append(s)
  return scores


def test_retriever_ranks_by_bm25():
  r = tools.Retriever(DOCS)
  assert [i for i, _ in r.search("quarks")] == [2]  # a rare word finds its document only
  ranked = r.search("cat mat")
  assert [i for i, _ in ranked] == [0, 3]  # same terms, but document 3 is long: length normalisation
  reference = _bm25_reference(DOCS, "cat mat")
  assert [s for _, s in ranked] == pytest.approx([reference[0], reference[3]])
  reference = _bm25_reference(DOCS, "THE Cat!")
  assert [i for i, _ in r.search("THE Cat!", k=10)] == sorted(
      (i for i, s in enumerate(reference) if s > 0), key=lambda i: -reference[i])
  assert len(r.search("the", k=2)) == 2 and r.search("the", k=0) == []
  assert r.search("zebra") == [] and r("zebra") == "no results"


def test_retriever_text_for_the_model():
  r = tools.Retriever(DOCS)
  assert r("quarks") == "[1] Physics qcd\nquantum chromodynamics explains how quarks bind"
  text = r("mat", k=3)
  assert text.startswith("[1] the cat sat on the mat\n\n[2] Pets\n") and text.endswith("...")
  assert len(text.split("\n\n")[1]) < 330


def test_retriever_from_path(tmp_path):
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "rope.txt").write_text("rotary position embeddings rotate queries and keys")
  (tmp_path / "docs" / "norm.txt").write_text("rmsnorm rescales activations")
  (tmp_path / "docs" / "skip.md").write_text("rotary")
  r = tools.Retriever.from_path(tmp_path / "docs")
  assert len(r.docs) == 2 and r("rotary").startswith("[1] rope rope.txt\n")
  good = tmp_path / "ok.jsonl"
  good.write_text('{"text": "alpha beta", "id": 1}\n\n{"text": "gamma"}\n')
  assert [i for i, _ in tools.Retriever.from_path(str(good)).search("gamma")] == [1]
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"text": "fine"}\n{"text": oops}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:3: not JSON"):
    tools.Retriever.from_path(bad)
  bad.write_text('{"text": "fine"}\n{"title": "no text"}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected an object with a string 'text'"):
    tools.Retriever.from_path(bad)
  with pytest.raises(FileNotFoundError, match="missing"):
    tools.Retriever.from_path(tmp_path / "missing")
  with pytest.raises(ValueError, match="no .txt files"):
    tools.Retriever.from_path(tmp_path)
  with pytest.raises(ValueError, match="document 1"):
    tools.Retriever(["ok", {"title": "no text"}])


# --------------------------------------------------------------------------------------------------------------------
# dispatch

def test_run_tool():
  assert tools.run_tool("calculator", "347*29") == "10063"
  assert tools.run_tool("python", "print(6*7)") == "42\n"
  assert tools.run_tool("browser", "x") == "error: unknown tool 'browser' (available: calculator, python)"

  def broken(argument):
    raise RuntimeError("boom")
  assert tools.run_tool("broken", "x", {"broken": broken}) == "error: RuntimeError: boom"
  search = tools.Retriever(DOCS)
  assert tools.run_tool("search", "quarks", {**tools.TOOLS, "search": search}).startswith("[1] Physics")
  assert tools.run_tool("search", "x", {"search": search}) == "no results"
