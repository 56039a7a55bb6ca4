"""The machine record that every table's "Machine:" line is written from."""

import torch

from iri_alignment import devices, provenance


def test_machine_line_names_the_instruction_set_and_reads_older_records():
    info = {"cpu": "AMD EPYC", "cores": 2, "gpu": None, "torch": "2.14.1", "torch_threads": 1,
            "git_commit": "0123456789abcdef"}
    assert provenance.machine_line(info) == "AMD EPYC (2 cores), torch 2.14.1, 1 threads, commit 0123456789ab"
    info["cpu_isa"] = "AVX512, bf16 native"
    assert provenance.machine_line(info).startswith("AMD EPYC (2 cores, AVX512, bf16 native), torch 2.14.1")


def test_cpu_isa_says_bf16_native_only_where_it_is(monkeypatch):
    capability = torch.backends.cpu.get_cpu_capability()
    for native in (True, False):
        monkeypatch.setattr(devices, "bf16_native", lambda device, native=native: native)
        isa = provenance.cpu_isa()
        assert isa.startswith(capability)
        assert ("bf16 native" in isa) is native
    assert provenance.machine(threads=1)["cpu_isa"].startswith(capability)
