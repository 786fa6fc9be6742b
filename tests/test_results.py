"""Result files name the machine precisely enough to compare runs across hosts."""

from __future__ import annotations

import json

from apex_models.evaluation.results import cpu_identity, write_result

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512bw avx_vnni

processor\t: 1
model name\t: something else
flags\t\t: fpu amx_int8
"""


def test_cpu_identity_reads_the_first_processor_and_the_speed_flags() -> None:
    assert cpu_identity(CPUINFO) == {"cpu": "AMD EPYC", "cpu_id": "family 26 model 2",
                                     "cpu_speed_flags": ["avx2", "avx512f", "avx512_vnni", "avx_vnni"]}
    assert cpu_identity("model name\t: ARM\n") == {"cpu": "ARM", "cpu_id": None, "cpu_speed_flags": []}


def test_a_result_file_names_command_commit_and_machine(tmp_path) -> None:
    path = write_result(tmp_path / "r.json", "demo", {"x": 1}, command="python demo.py", extra={"profile": "tiny"})
    doc = json.loads(path.read_text())
    assert doc["command"] == "python demo.py" and doc["results"] == {"x": 1} and doc["profile"] == "tiny"
    assert doc["machine"]["cores"] >= 1 and isinstance(doc["machine"]["cpu_speed_flags"], list)
    assert not list(tmp_path.glob("*.tmp"))
