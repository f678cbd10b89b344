"""The committed generated code is what `python -m agent.gen` produces from the proto."""

from pathlib import Path

from agent.gen import GENERATED, generate

GEN_DIR = Path(__file__).resolve().parents[2] / "agent" / "gen"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in GENERATED:
        assert (tmp_path / name).read_text() == (GEN_DIR / name).read_text(), (
            f"agent/gen/{name} is stale: run `python -m agent.gen`"
        )


def test_generated_modules_import_from_the_package() -> None:
    from agent.gen import agent_pb2, agent_pb2_grpc

    assert agent_pb2.DESCRIPTOR.package == "bronze.agent.v1"
    assert hasattr(agent_pb2_grpc, "AgentSessionStub")
    assert hasattr(agent_pb2_grpc, "EnrollmentStub")
