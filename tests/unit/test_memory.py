"""authfilter.memory: freed big buffers are reused, not mapped afresh for every message."""
import os
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
from authfilter.memory import keep_freed_buffers
tuned = keep_freed_buffers() if sys.argv[1] == "tuned" else None
def faults_of_one_message():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = bytearray(4 << 20)          # a 4 MB message: allocated and written
    copy = bytes(block)                 # and one copy of it, as the receive path makes
    del block, copy
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_message()                 # the first message may grow the heap
print(tuned, min(faults_of_one_message() for _ in range(5)))
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True,
                         text=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not hasattr(os, "confstr") or not os.confstr("CS_GNU_LIBC_VERSION"),
                    reason="glibc only")
def test_a_second_big_message_costs_no_page_faults_once_tuned():
    # 8 MB touched per message is 2048 pages: untuned glibc maps (and faults in) them afresh.
    assert faults("plain")[1] > 1000
    tuned, tuned_faults = faults("tuned")
    assert tuned == "True" and tuned_faults < 100
