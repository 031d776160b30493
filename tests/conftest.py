import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def sigkill_when(cmd, env, log, condition, *, timeout=300, poll=0.02):
    """Run ``cmd`` (output to the file ``log``) and SIGKILL it as soon as ``condition()``
    returns something truthy; return ``(that value or the last falsy one, return code)``. The
    process is always gone afterwards. Shared by the tests that kill a run mid-way."""
    import signal
    import subprocess
    import time

    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    value = None
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            value = condition()
            if value:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(poll)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    return value, proc.returncode
