"""Claims: one process at a time per prompt; a dead holder's claim is free at once; a released claim leaves no file."""

import os
import signal
import subprocess
import sys
import threading
import time

from ivmixed.claims import CLAIM_FILE, claim, claim_path, holder, wait_for_claim

KEY = "ab" * 32


def hold_in_child(folder, key):
    """A child process that claims ``key`` and sleeps; returns it once the claim is held."""
    code = ("import sys, time; from ivmixed.claims import claim; c = claim(sys.argv[1], sys.argv[2]); "
            "print('held' if c else 'busy', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, folder, key], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_claim_excludes_other_processes_until_its_holder_dies(tmp_path):
    child = hold_in_child(str(tmp_path), KEY)
    try:
        assert claim(str(tmp_path), KEY) is None
        assert holder(str(tmp_path), KEY) == f"pid {child.pid} on {os.uname().nodename}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    mine = claim(str(tmp_path), KEY)  # the kernel dropped the dead holder's lock
    assert mine is not None
    assert holder(str(tmp_path), KEY).startswith(f"pid {os.getpid()} ")
    mine.release()
    assert not os.path.exists(claim_path(str(tmp_path), KEY))


def test_claims_of_different_prompts_do_not_conflict(tmp_path):
    first, second = claim(str(tmp_path), KEY), claim(str(tmp_path), "cd" * 32)
    assert first is not None and second is not None
    assert claim(str(tmp_path), KEY) is None  # another open file, even in this process, is another claimant
    first.release()
    second.release()
    assert os.listdir(tmp_path) == []


def test_a_claim_released_between_open_and_lock_is_claimed_afresh(tmp_path, monkeypatch):
    """The holder removes the file as it releases it. A claimant that opened the old file just before must not take
    its lock on that removed file for a claim (a third process would then claim the new file too): it claims the
    path afresh."""
    import ivmixed.claims as claims

    first = claim(str(tmp_path), KEY)
    real_flock, calls = claims.fcntl.flock, []

    def flock(fd, operation):
        calls.append(fd)
        if len(calls) == 1:
            first.release()  # between this claimant's open and its lock
        return real_flock(fd, operation)

    monkeypatch.setattr(claims.fcntl, "flock", flock)
    second = claim(str(tmp_path), KEY)
    monkeypatch.undo()
    assert second is not None and len(calls) == 2
    path = claim_path(str(tmp_path), KEY)
    assert os.fstat(second.fd).st_ino == os.stat(path).st_ino  # holds the file at the path, not a removed one
    assert claim(str(tmp_path), KEY) is None
    second.release()


def test_a_waiter_gets_the_claim_once_the_holder_releases_it(tmp_path):
    first = claim(str(tmp_path), KEY)
    got = []
    waiter = threading.Thread(target=lambda: got.append(wait_for_claim(str(tmp_path), KEY, poll_s=0.01)))
    waiter.start()
    time.sleep(0.3)
    assert not got  # still waiting
    first.release()
    waiter.join(10)
    (second,) = got
    assert second is not None and claim(str(tmp_path), KEY) is None
    second.release()


def test_claim_file_names():
    assert CLAIM_FILE.match(os.path.basename(claim_path("x", KEY)))
    assert not CLAIM_FILE.match("notes.claim")


def test_waiting_for_a_claim_ends_when_asked_to_stop(tmp_path):
    held = claim(str(tmp_path), KEY)
    asked = []
    assert wait_for_claim(str(tmp_path), KEY, should_stop=lambda: asked.append(1) or len(asked) > 3, poll_s=0) is None
    assert len(asked) == 4
    held.release()


def test_a_stop_while_waiting_releases_the_claims_already_taken(tmp_path):
    """A long-lived caller (the web app) stopped while its batch waits for a prompt another process holds must not
    keep the claims it took for the batch's other prompts."""
    import pytest

    from ivmixed.config import build_config
    from ivmixed.runner import Runner
    from ivmixed.stopping import RunStopped

    prompts = tmp_path / "p.txt"
    prompts.write_text("first\nsecond\n")
    out = tmp_path / "out"
    runner = Runner(build_config({"prompt_file": str(prompts), "tiny": True, "batch_size": 2, "device": "cpu",
                                  "output_dir": str(out)}), should_stop=lambda: True, progress_bars=False)
    plan = runner.plan()
    first, second = (item.outputs.fingerprint for item in plan.todo)
    elsewhere = claim(str(out), second)  # another process makes the second prompt

    class Bar:
        def update(self, n):
            pass

    with pytest.raises(RunStopped):
        runner._claim(plan.todo, plan.records, Bar(), passed=None)
    mine = claim(str(out), first)
    assert mine is not None  # released, though the stop came while waiting for the second
    mine.release()
    elsewhere.release()
