"""Bad intents give one clear error that names the field, never a traceback."""

from __future__ import annotations

import pytest

from corral import cli
from corral.k8s.intent import IntentError, parse_intent, parse_values

GOOD = {"name": "m", "source": "bundled"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "models: required"),
        ([], "expected a mapping, got a list"),
        ({"models": []}, "models: required"),
        ({"models": [GOOD], "modles": 1}, "modles: unknown field"),
        ({"models": [{"source": "bundled"}]}, r"models\[0\]\.name: required"),
        ({"models": [{"name": "Gemma_3", "source": "bundled"}]}, r"models\[0\]\.name: 'Gemma_3'"),
        ({"models": [{"name": "m"}]}, r"models\[0\]\.source: required"),
        ({"models": [{"name": "m", "source": "s3://x"}]}, r"models\[0\]\.source: 's3://x'"),
        ({"models": [{"name": "m", "source": "pvc://claim"}]}, r"pvc://CLAIM/PATH"),
        ({"models": [{**GOOD, "slots": 0}]}, r"models\[0\]\.slots: must be at least 1"),
        ({"models": [{**GOOD, "slots": "4"}]}, r"models\[0\]\.slots: expected a whole number"),
        (
            {"models": [{**GOOD, "replicas": {"min": 3, "max": 2}}]},
            r"models\[0\]\.replicas\.max: must be at least replicas\.min \(3\)",
        ),
        ({"models": [{**GOOD, "replicas": {"min": -1}}]}, r"replicas\.min: must be at least 0"),
        ({"models": [{**GOOD, "resources": {"memory": "8 GB"}}]}, r"resources\.memory: '8 GB'"),
        ({"models": [{**GOOD, "resources": {"gpus": 1}}]}, r"resources\.gpus: unknown field"),
        ({"models": [{**GOOD, "sha256": "abc"}]}, r"models\[0\]\.sha256: expected 64"),
        ({"models": [GOOD, GOOD]}, r"models\[1\]\.name: 'm' is used twice"),
        ({"models": [GOOD], "balancer": {"replicas": 0}}, "balancer.replicas: must be at least 1"),
        ({"models": [GOOD], "scaling": {"trigger": "cpu"}}, "scaling.trigger: 'cpu'"),
        ({"models": [GOOD], "cache": {"access_mode": "RWX"}}, "cache.access_mode: 'RWX'"),
    ],
)
def test_bad_intent_names_the_field(data, message):
    with pytest.raises(IntentError, match=message):
        parse_intent(data)


def test_defaults():
    intent = parse_intent({"models": [GOOD]})
    (model,) = intent.models
    assert (model.replicas.min, model.replicas.max) == (1, 1)
    assert model.slots == 2 and model.ctx_size == 2048  # the agent's own defaults
    assert intent.balancer.replicas == 2 and intent.scaling.trigger == "external"


def test_bad_values_name_the_key():
    intent = parse_intent({"models": [GOOD]})
    with pytest.raises(IntentError, match=r"values\.nodeSelctor: unknown field"):
        parse_values({"nodeSelctor": {}}, intent)
    with pytest.raises(IntentError, match=r"values\.models\.other: unknown field"):
        parse_values({"models": {"other": {}}}, intent)
    with pytest.raises(IntentError, match=r"values\.tolerations: expected a list"):
        parse_values({"tolerations": {"key": "x"}}, intent)


def test_the_command_prints_the_error_not_a_traceback(tmp_path, capsys):
    intent = tmp_path / "intent.yaml"
    intent.write_text("models:\n  - name: m\n    source: bundled\n    slots: many\n")
    assert cli.main(["k8s", "render", str(intent)]) == 2
    err = capsys.readouterr().err
    assert "models[0].slots: expected a whole number, got 'many'" in err
    assert "Traceback" not in err
    intent.write_text("models: [\n")
    assert cli.main(["k8s", "render", str(intent)]) == 2
    err = capsys.readouterr().err
    assert f"corral k8s render: {intent}: not valid YAML" in err
    assert err.count(str(intent)) == 1, err  # named once, not "x.yaml: x.yaml:"
    missing = tmp_path / "missing.yaml"
    assert cli.main(["k8s", "render", str(missing)]) == 2
    assert f"corral k8s render: {missing}: cannot read it: " in capsys.readouterr().err
    values = tmp_path / "v.yaml"
    values.write_text("a: [\n")
    intent.write_text("models:\n  - name: m\n    source: bundled\n")
    assert cli.main(["k8s", "render", str(intent), "--values", str(values)]) == 2
    assert f"the values file {values}: not valid YAML" in capsys.readouterr().err


def test_the_command_writes_one_file_per_object(tmp_path, capsys):
    intent = tmp_path / "intent.yaml"
    intent.write_text("models:\n  - name: m\n    source: bundled\n    replicas: {min: 0, max: 2}\n")
    assert cli.main(["k8s", "render", str(intent), "-o", str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "scaledobject-corral-m.yaml" in names and "deployment-corral-m.yaml" in names
    assert cli.main(["k8s", "render", str(intent)]) == 0
    assert "kind: ScaledObject" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("inline", "file_text", "message"),
    [
        ("values: [1]\n", None, "values must be a mapping (key: value), got list"),
        ("values: text\n", None, "values must be a mapping (key: value), got str"),
        ("", "hello\n", "the values file .*v.yaml must be a mapping (key: value), got str"),
        ("", "- 1\n", "the values file .*v.yaml must be a mapping (key: value), got list"),
    ],
)
def test_values_of_another_shape_are_a_clear_error(tmp_path, capsys, inline, file_text, message):
    """A YAML document that is valid but not a mapping raised a TypeError or a
    ValueError from the merge of the intent's values with the file's."""
    import re

    intent = tmp_path / "intent.yaml"
    intent.write_text("models:\n  - name: m\n    source: bundled\n" + inline)
    argv = ["k8s", "render", str(intent)]
    if file_text is not None:
        (tmp_path / "v.yaml").write_text(file_text)
        argv += ["--values", str(tmp_path / "v.yaml")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message.replace("(", r"\(").replace(")", r"\)"), err), err
    assert "Traceback" not in err


def test_an_output_folder_that_cannot_be_written_is_named(tmp_path, capsys):
    intent = tmp_path / "intent.yaml"
    intent.write_text("models:\n  - name: m\n    source: bundled\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main(["k8s", "render", str(intent), "-o", str(blocker / "out")]) == 1
    err = capsys.readouterr().err
    assert f"corral k8s render: cannot write into -o {blocker / 'out'}:" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["127.0.0.1:1", "--timeout", "-2"], "'-2' cannot be negative"),
        (["127.0.0.1:1", "--timeout", "inf"], "'inf' is not a finite number"),
        (["http://x:1"], "give HOST:PORT, not a URL"),
        (["nope"], "expected HOST:PORT"),
    ],
)
def test_drain_checks_its_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["k8s", "drain", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_drain_takes_a_timeout_of_0():
    """0: the agent is marked draining and the command returns at once (as before)."""
    args = cli.parse_args(["k8s", "drain", "127.0.0.1:1", "--timeout", "0"])
    assert args.timeout == 0.0
