"""The command line: ingest, documents, query, delete and serve --ingest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from ragkit import SAMPLE_NAMES, SAMPLES
from support import closed_port

from rag_llm.cli import main
from rag_llm.testing import UpstreamServer


@pytest.fixture
def config(upstream: UpstreamServer, tmp_path: Path) -> Path:
    path = tmp_path / "rag-llm.toml"
    path.write_text(
        f'[providers.embedding]\ntype = "openai"\nmodel = "m"\nbase_url = "{upstream.base_url}"\n'
        f'[providers.llm]\ntype = "openai"\nmodel = "c"\nbase_url = "{upstream.base_url}"\n'
        f'[rag]\ndata_dir = "{tmp_path / "data"}"\n')
    return path


def test_ingest_lists_each_file_and_exits_1_when_one_failed(
    config: Path, corpus: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (corpus / "broken.pdf").write_bytes(b"not a pdf")
    assert main(["ingest", str(corpus), "--config", str(config)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in out[:-1]) == ["added"] * 7 + ["failed"]
    assert any(line.startswith("failed") and "broken.pdf: is not a readable PDF" in line
               for line in out)
    assert out[-1].startswith("7 documents (7 added, 0 updated, 0 unchanged), 1 failed, ")

    (corpus / "broken.pdf").unlink()
    assert main(["ingest", str(corpus), "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "7 documents (0 added, 0 updated, 7 unchanged), 0 failed, 0 chunks stored")


def test_documents_query_and_delete(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    main(["ingest", str(SAMPLES), "--config", str(config)])
    capsys.readouterr()
    assert main(["documents", "--json", "--config", str(config)]) == 0
    documents = json.loads(capsys.readouterr().out)
    assert sorted(Path(d["source"]).name for d in documents) == sorted(SAMPLE_NAMES)

    assert main(["query", "How long do bees live?", "--top-k", "2", "--config",
                 str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("echo: Sources:")
    assert "\nSources:\n[1] " in out
    assert out.rstrip().splitlines()[-1].startswith("[2] ")

    assert main(["query", "bees", "--stream", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("echo: Sources:")

    espresso = next(d for d in documents if d["source"].endswith("espresso.txt"))
    prefix = espresso["source"][:-len("espresso.txt")] + "e"  # espresso.txt alone
    for where in (["--document", espresso["id"]], ["--source-prefix", prefix]):
        assert main(["query", "bees", "--json", *where, "--config", str(config)]) == 0
        cited = {c["source"] for c in json.loads(capsys.readouterr().out)["citations"]}
        assert cited == {espresso["source"]}

    target = documents[0]["id"]
    assert main(["delete", target, "--config", str(config)]) == 0
    assert main(["delete", target, "--config", str(config)]) == 1
    assert f"no document with id {target}" in capsys.readouterr().err


def test_bad_arguments_are_refused_with_a_message(
    config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["query", "  ", "--config", str(config)]) == 2
    assert "the question is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["query", "q", "--top-k", "0"])
    assert "must be a positive integer" in capsys.readouterr().err


def test_a_store_built_with_another_model_is_named(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    main(["ingest", str(SAMPLES / "espresso.txt"), "--config", str(config)])
    config.write_text(config.read_text().replace('model = "m"', 'model = "other"'))
    assert main(["query", "espresso", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "configuration error: embedding='openai/other'" in err
    assert "'openai/m'" in err


def test_serve_ingests_first_then_serves_the_api(
    config: Path, upstream: UpstreamServer,
) -> None:
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_LLM_", "OPENAI_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "rag_llm.cli", "serve", "--port", str(port), "--config",
         str(config), "--ingest", str(SAMPLES)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v1/documents", timeout=1) as response:
                    documents = json.load(response)
                    break
            except OSError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.1)
        request = urllib.request.Request(
            f"{base}/v1/query", data=json.dumps({"question": "espresso"}).encode(),
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.load(response)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert len(documents) == len(SAMPLE_NAMES)
    assert answer["mode"] == "generated"
    assert "7 documents (7 added, 0 updated, 0 unchanged), 0 failed" in stderr
    assert process.returncode in (0, -signal.SIGTERM)


@pytest.mark.parametrize(("table", "message"), [
    ("max_conections = 50", "providers.embedding.max_conections: is not a known setting; "
                            "did you mean `max_connections`?"),
    ("max_connections = -1", "providers.embedding.max_connections=-1: must be >= 1"),
])
def test_every_command_refuses_a_bad_provider_at_start_in_one_line(
    config: Path, table: str, message: str, capsys: pytest.CaptureFixture[str],
) -> None:
    config.write_text(config.read_text().replace('model = "m"\n', f'model = "m"\n{table}\n', 1))
    for command in (["documents"], ["query", "q"], ["config", "check"]):
        assert main([*command, "--config", str(config)]) == 1
        err = capsys.readouterr().err
        assert err == f"rag-llm: configuration error: {message}\n", command


def test_serve_exits_1_on_a_bad_variable_before_serving(config: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_LLM_", "OPENAI_"))}
    env["RAG_LLM_EMBEDDING__MAX_CONECTIONS"] = "5"
    result = subprocess.run(
        [sys.executable, "-m", "rag_llm.cli", "serve", "--port", str(closed_port()),
         "--config", str(config)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == ("rag-llm: configuration error: RAG_LLM_EMBEDDING__MAX_CONECTIONS: "
                             "is not a known setting; did you mean "
                             "RAG_LLM_EMBEDDING__MAX_CONNECTIONS?\n")


def test_config_check_prints_every_value_masked_with_its_source(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "sk-check-SECRET-42"
    config.write_text(config.read_text().replace('model = "m"\n', f'model = "m"\n'
                                                 f'api_key = "{secret}"\n', 1))
    monkeypatch.setenv("RAG_LLM_EMBEDDING__MAX_CONNECTIONS", "7")
    monkeypatch.setenv("RAG_LLM_TOP_K", "3")
    assert main(["config", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert secret not in out
    lines = {line.split(" = ")[0]: line for line in out.splitlines() if " = " in line}
    embedding = out.split("[providers.llm]")[0]
    assert 'api_key = "**********"' in embedding
    assert f"# file {config}" in lines["model"]
    assert "max_connections = 7" in embedding
    assert "# environment RAG_LLM_EMBEDDING__MAX_CONNECTIONS" in embedding
    assert "max_keepalive_connections = 7" in embedding  # follows the smaller limit
    assert lines["top_k"].endswith("# environment RAG_LLM_TOP_K")
    assert lines["chunk_size"].endswith("# default")


def test_commands_go_to_the_service_running_on_their_data_directory(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_LLM_", "OPENAI_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "rag_llm.cli", "serve", "--port", str(port), "--config",
         str(config), "--ingest", str(SAMPLES)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    # The command's own providers point nowhere: only the service can answer.
    unreachable = tmp_path / "unreachable.toml"
    unreachable.write_text(
        f'[providers.embedding]\ntype = "openai"\nmodel = "m"\n'
        f'base_url = "http://127.0.0.1:{closed_port()}/v1"\n'
        f'[rag]\ndata_dir = "{tmp_path / "data"}"\n')
    announced = tmp_path / "data" / "service.json"
    try:
        deadline = time.monotonic() + 30
        while not (announced.exists() and _answers(f"http://127.0.0.1:{port}/v1/documents")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.1)
        capsys.readouterr()
        assert main(["documents", "--json", "--verbose", "--config", str(unreachable)]) == 0
        out, err = capsys.readouterr()
        assert f"sending the command to the service at http://127.0.0.1:{port}" in err
        documents = json.loads(out)
        assert len(documents) == len(SAMPLE_NAMES)

        assert main(["query", "espresso", "--json", "--config", str(unreachable)]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["mode"] == "generated"
        assert answer["citations"]
        assert main(["query", "espresso", "--stream", "--config", str(unreachable)]) == 0
        assert "Sources:\n[1] " in capsys.readouterr().out
        honeybees = next(d for d in documents if d["source"].endswith("honeybees.html"))
        assert main(["query", "espresso", "--json", "--document", honeybees["id"],
                     "--config", str(unreachable)]) == 0
        cited = {c["source"] for c in json.loads(capsys.readouterr().out)["citations"]}
        assert cited == {honeybees["source"]}

        target = documents[0]["id"]
        assert main(["delete", target, "--config", str(unreachable)]) == 0
        assert main(["delete", target, "--config", str(unreachable)]) == 1
        assert capsys.readouterr() == (f"deleted {target}\n", f"no document with id {target}\n")
        assert main(["documents", "--json", "--url", f"http://127.0.0.1:{port}",
                     "--data-dir", str(tmp_path / "elsewhere")]) == 0
        assert len(json.loads(capsys.readouterr().out)) == len(SAMPLE_NAMES) - 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert not announced.exists()
    capsys.readouterr()
    assert main(["documents", "--verbose", "--config", str(config)]) == 0
    assert "no service runs on" in capsys.readouterr().err
    assert main(["documents", "--url", f"http://127.0.0.1:{port}", "--config",
                 str(config)]) == 1
    assert f"no service answers at http://127.0.0.1:{port}" in capsys.readouterr().err


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False
