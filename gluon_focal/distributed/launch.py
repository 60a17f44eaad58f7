"""Launch an MXNet parameter-server (``dist_*`` kvstore) job.

Usage::

    python -m gluon_focal.distributed.launch -n 2 -s 1 -- \\
        python examples/train_retinanet.py --kvstore dist_sync ...

    python -m gluon_focal.distributed.launch -n 4 -s 2 --host-file hosts -- \\
        /opt/venv/bin/python examples/train_retinanet.py --kvstore dist_sync ...

Every process (1 scheduler, S servers, N workers) runs the *same* command;
MXNet turns a process into a scheduler or a server when it imports ``mxnet``
with ``DMLC_ROLE`` set accordingly, so the script never returns there.

This replaces ``mxnet/tools/launch.py`` (dmlc_tracker), which on Python >= 3.9
crashes on ``Thread.isAlive`` (removed; leaving its scheduler running), never
forwards a worker's exit code, and, when the host name resolves to 127.x,
advertises the first non-loopback address it finds.  Here:

* local mode binds everything to 127.0.0.1 (``DMLC_PS_ROOT_URI``,
  ``DMLC_NODE_HOST``) on a free port;
* every child runs in its own process group; the launcher waits for the
  workers, returns the first non-zero worker exit code (or 0; 124 on
  ``--timeout``; 128+signum on SIGINT/SIGTERM), and always terminates and
  reaps the whole tree (SIGTERM, then SIGKILL after a grace period);
* a failing worker (or a server/scheduler dying early) stops the job at once
  instead of leaving the other workers blocked in a ``dist_sync`` barrier.

``ssh`` mode (``--host-file``) runs the same environment over ``ssh`` (see
:func:`ssh_commands`); the scheduler runs on the first host.
"""
import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

ROLES = ('scheduler', 'server', 'worker')
TIMEOUT_EXIT_CODE = 124
# Environment forwarded to remote hosts in ssh mode (when set locally),
# in addition to --env and every MXNET_* / DMLC_* variable.
SSH_FORWARD_ENV = ('PYTHONPATH', 'OMP_NUM_THREADS', 'LD_LIBRARY_PATH',
                   'CUDA_VISIBLE_DEVICES', 'PS_VERBOSE')


class Proc:
    """One planned process: its role, argv and extra environment."""

    def __init__(self, role, index, argv, env):
        self.role, self.index, self.argv, self.env = role, index, argv, env
        self.popen = None

    @property
    def name(self):
        return self.role if self.role == 'scheduler' else '%s%d' % (self.role, self.index)

    def __repr__(self):
        return 'Proc(%s, %r)' % (self.name, self.argv)


# --------------------------------------------------------------------------- plans
def free_port(host='127.0.0.1'):
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ps_env(role, root_uri, root_port, num_workers, num_servers, node_host=None):
    """The variables ps-lite reads (see ps-lite ``van.cc`` / ``postoffice.cc``)."""
    assert role in ROLES, role
    env = {'DMLC_ROLE': role,
           'DMLC_PS_ROOT_URI': str(root_uri),
           'DMLC_PS_ROOT_PORT': str(root_port),
           'DMLC_NUM_WORKER': str(num_workers),
           'DMLC_NUM_SERVER': str(num_servers)}
    if node_host is not None:
        # Address this node binds to and advertises (servers/workers); without
        # it ps-lite picks the first non-loopback interface.
        env['DMLC_NODE_HOST'] = str(node_host)
    return env


def _plan(num_workers, num_servers, root_uri, root_port, host_of):
    """[(role, index, env, host)] for scheduler, servers, workers.

    ``DMLC_TASK_ID`` follows dmlc_tracker: workers 0..N-1, servers N..N+S-1.
    Note that MXNet's ``kv.rank`` is assigned by the scheduler and need not
    equal ``DMLC_TASK_ID``.
    """
    plan = [('scheduler', 0, root_uri)]
    plan += [('server', i, host_of('server', i)) for i in range(num_servers)]
    plan += [('worker', i, host_of('worker', i)) for i in range(num_workers)]
    out = []
    for role, i, host in plan:
        env = ps_env(role, root_uri, root_port, num_workers, num_servers,
                     node_host=None if role == 'scheduler' else host)
        if role != 'scheduler':
            env['DMLC_TASK_ID'] = str(i if role == 'worker' else num_workers + i)
        out.append((role, i, env, host))
    return out


def local_commands(num_workers, num_servers, command, port=None, host='127.0.0.1',
                   extra_env=None):
    """Processes of a local job: everything on loopback ``host``."""
    port = free_port(host) if port is None else port
    procs = []
    for role, i, env, _ in _plan(num_workers, num_servers, host, port, lambda r, i: host):
        env['DMLC_INTERFACE'] = 'lo'
        env.update(extra_env or {})
        procs.append(Proc(role, i, list(command), env))
    return procs


def parse_host_file(path_or_lines):
    """Hosts from a file (or list of lines): ``[user@]host[:ssh_port]`` per line,
    blank lines and ``#`` comments ignored; MPI-style ``slots=N`` is ignored."""
    if isinstance(path_or_lines, str):
        with open(path_or_lines) as f:
            lines = f.read().splitlines()
    else:
        lines = list(path_or_lines)
    hosts = []
    for line in lines:
        line = line.split('#', 1)[0].split('slots=', 1)[0].strip()
        if not line:
            continue
        line = line.split()[0]
        ssh_port = None
        if ':' in line:
            line, ssh_port = line.rsplit(':', 1)
        hosts.append((line, ssh_port))
    if not hosts:
        raise ValueError('host file lists no host')
    return hosts


def _address(host):
    return host.rsplit('@', 1)[-1]


def ssh_commands(num_workers, num_servers, command, hosts, port=9091, workdir=None,
                 extra_env=None, ssh='ssh', environ=None):
    """Processes of a multi-host job, each an ``ssh`` command line.

    The scheduler runs on ``hosts[0]`` and listens on ``port`` there; servers
    and workers are placed round-robin over ``hosts`` (servers first), each
    with ``DMLC_NODE_HOST`` set to its host's address.  Remote processes run
    ``cd WORKDIR && env VAR=... COMMAND`` (WORKDIR defaults to the current
    directory: the code must sit at the same path on every host).  ``ssh -tt``
    gives each remote process a terminal, so it gets SIGHUP when the launcher
    kills its ssh.
    """
    environ = os.environ if environ is None else environ
    workdir = os.getcwd() if workdir is None else workdir
    forward = {k: v for k, v in environ.items()
               if k in SSH_FORWARD_ENV or k.startswith('MXNET_')
               or (k.startswith('DMLC_') and k not in ('DMLC_ROLE', 'DMLC_NODE_HOST'))}
    forward.update(extra_env or {})
    root = _address(hosts[0][0])
    n_hosts = len(hosts)

    def host_of(role, i):
        # servers take hosts 0,1,..; workers continue round-robin after them
        return hosts[(i if role == 'server' else num_servers + i) % n_hosts]

    procs = []
    for role, i, env, host in _plan(num_workers, num_servers, root, port,
                                    lambda r, i: host_of(r, i)):
        if role == 'scheduler':
            host = hosts[0]
        login, ssh_port = host
        if role != 'scheduler':
            env['DMLC_NODE_HOST'] = _address(login)
        full = dict(forward)
        full.update(env)
        remote = 'cd %s && env %s %s' % (
            shlex.quote(workdir),
            ' '.join('%s=%s' % (k, shlex.quote(str(v))) for k, v in sorted(full.items())),
            ' '.join(shlex.quote(a) for a in command))
        argv = [ssh, '-tt', '-o', 'StrictHostKeyChecking=no', '-o', 'BatchMode=yes']
        if ssh_port:
            argv += ['-p', str(ssh_port)]
        argv += [login, remote]
        procs.append(Proc(role, i, argv, {}))
    return procs


# --------------------------------------------------------------------------- running
class _Stop(Exception):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum, _frame):
    raise _Stop(signum)


def _log(msg):
    sys.stderr.write('[launch] %s\n' % msg)
    sys.stderr.flush()


def _exit_code(rc):
    """Popen return code -> shell-style exit code (-SIG -> 128+SIG)."""
    return 128 - rc if rc < 0 else rc


def _kill_group(proc, sig):
    try:
        os.killpg(proc.popen.pid, sig)  # pgid == pid (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_all(procs, grace=5.0):
    """SIGTERM every process group, SIGKILL what is left after ``grace`` s,
    and reap every child."""
    started = [p for p in procs if p.popen is not None]
    for p in started:
        _kill_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in started:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in started:
        # also catches grandchildren whose parent already exited
        _kill_group(p, signal.SIGKILL)
        p.popen.wait()


def run(procs, timeout=None, grace=5.0, verbose=False):
    """Start ``procs``, wait for the workers, clean up; return the exit code."""
    in_main = threading.current_thread() is threading.main_thread()
    sigs = (signal.SIGINT, signal.SIGTERM) if in_main else ()
    # while processes start, a signal is only noted: raised inside Popen it would
    # lose the Popen object of a process that was already forked (left running)
    deferred = []
    old = {s: signal.signal(s, lambda signum, _frame: deferred.append(signum)) for s in sigs}
    deadline = None if not timeout else time.monotonic() + timeout
    try:
        for p in procs:
            env = dict(os.environ)
            env.update(p.env)
            if verbose:
                _log('start %s: %s' % (p.name, ' '.join(map(shlex.quote, p.argv))))
            p.popen = subprocess.Popen(p.argv, env=env, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
            if deferred:
                break
        for s in sigs:
            signal.signal(s, _raise_stop)
        if deferred:
            raise _Stop(deferred[0])
        workers = [p for p in procs if p.role == 'worker']
        others = [p for p in procs if p.role != 'worker']
        pending = list(workers)
        while pending:
            for p in list(pending):
                rc = p.popen.poll()
                if rc is None:
                    continue
                pending.remove(p)
                if rc != 0:
                    _log('%s exited with code %d; stopping the job' % (p.name, rc))
                    return _exit_code(rc)
            for p in others:
                # A server/scheduler may exit 0 once every worker has reached
                # ps::Finalize, before the last worker process is gone.
                rc = p.popen.poll()
                if rc:
                    _log('%s exited with code %d; stopping the job' % (p.name, rc))
                    return _exit_code(rc)
            if deadline is not None and time.monotonic() > deadline:
                _log('timeout after %gs; stopping the job' % timeout)
                return TIMEOUT_EXIT_CODE
            time.sleep(0.05)
        # Workers are done: servers/scheduler normally exit on their own.
        end = time.monotonic() + grace
        for p in others:
            try:
                p.popen.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log('%s still running after the workers finished; terminating' % p.name)
        return 0
    except OSError as err:      # e.g. the command does not exist
        _log('cannot start the job: %s' % err)
        return 127
    except _Stop as stop:
        _log('got signal %d; stopping the job' % stop.signum)
        return 128 + stop.signum
    finally:
        # Ignore further SIGINT/SIGTERM while cleaning up, so cleanup completes.
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        try:
            terminate_all(procs, grace=grace)
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def build_parser():
    p = argparse.ArgumentParser(
        prog='python -m gluon_focal.distributed.launch',
        description='Launch an MXNet parameter-server job (1 scheduler, S servers, '
                    'N workers); every process runs COMMAND.')
    p.add_argument('-n', '--num-workers', type=int, required=True)
    p.add_argument('-s', '--num-servers', type=int, default=None,
                   help='default: the number of workers')
    p.add_argument('-H', '--host-file', default=None,
                   help='one [user@]host[:ssh_port] per line; implies --launcher ssh')
    p.add_argument('--launcher', choices=('local', 'ssh'), default=None,
                   help='default: ssh with --host-file, else local')
    p.add_argument('-p', '--port', type=int, default=None,
                   help='scheduler port (local default: a free one; ssh default: 9091)')
    p.add_argument('--workdir', default=None,
                   help='ssh mode: directory to cd into on the remote hosts '
                        '(default: the current directory)')
    p.add_argument('--env', action='append', default=[], metavar='KEY[=VALUE]',
                   help='extra environment for every process (KEY alone forwards '
                        'the local value); repeatable')
    p.add_argument('--timeout', type=float, default=None, metavar='SEC',
                   help='stop the job (exit code 124) after SEC seconds')
    p.add_argument('--grace', type=float, default=5.0, metavar='SEC',
                   help='seconds between SIGTERM and SIGKILL on cleanup')
    p.add_argument('--dry-run', action='store_true',
                   help='print the commands with their environment and exit')
    p.add_argument('-v', '--verbose', action='store_true')
    p.add_argument('command', nargs=argparse.REMAINDER,
                   help='the training command, after "--"')
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command and args.command[0] == '--':
        args.command = args.command[1:]
    if not args.command:
        parser.error('missing the command to run (put it after "--")')
    if args.num_workers < 1:
        parser.error('--num-workers must be >= 1')
    if args.num_servers is None:
        args.num_servers = args.num_workers
    if args.num_servers < 1:
        parser.error('--num-servers must be >= 1')
    if args.launcher is None:
        args.launcher = 'ssh' if args.host_file else 'local'
    if args.launcher == 'ssh' and not args.host_file:
        parser.error('--launcher ssh needs --host-file')
    extra = {}
    for item in args.env:
        key, sep, value = item.partition('=')
        if not sep:
            if key not in os.environ:
                parser.error('--env %s: not set in the environment' % key)
            value = os.environ[key]
        extra[key] = value
    args.extra_env = extra
    return args


def make_procs(args):
    if args.launcher == 'local':
        return local_commands(args.num_workers, args.num_servers, args.command,
                              port=args.port, extra_env=args.extra_env)
    return ssh_commands(args.num_workers, args.num_servers, args.command,
                        parse_host_file(args.host_file),
                        port=9091 if args.port is None else args.port,
                        workdir=args.workdir, extra_env=args.extra_env)


def main(argv=None):
    args = parse_args(argv)
    procs = make_procs(args)
    if args.dry_run:
        for p in procs:
            words = ['%s=%s' % (k, shlex.quote(v)) for k, v in sorted(p.env.items())]
            words += [shlex.quote(a) for a in p.argv]
            print('%s: %s' % (p.name, ' '.join(words)))
        return 0
    return run(procs, timeout=args.timeout, grace=args.grace, verbose=args.verbose)


if __name__ == '__main__':
    sys.exit(main())
