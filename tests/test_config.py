"""Configuration: defaults, the shipped example, and errors that name the key and its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli import main
from appliance.config import Settings, load_settings, parse_settings
from appliance.errors import ConfigError
from appliance.paths import resolve_paths

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "appliance.example.yaml"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "site.yaml")
    return str(info.value)


def test_no_file_gives_working_defaults() -> None:
    settings = load_settings(None)
    assert settings.receiver.port == 11112
    assert settings.receiver.ae_title == "APPLIANCE"
    assert settings.storage.free_space_floor_mb == 512


def test_the_shipped_example_validates_to_the_defaults() -> None:
    assert load_settings(EXAMPLE) == Settings()


def test_every_default_key_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    for section, values in Settings().model_dump().items():
        keys = values.keys() if isinstance(values, dict) else [section]
        for key in keys:
            assert f"{key}:" in text, f"{section}.{key} is missing from the example"


def test_unknown_key_names_the_key_and_line() -> None:
    message = error_of("receiver:\n  port: 104\n  ae_tilte: X\n")
    assert "site.yaml:3: receiver.ae_tilte: unknown key" in message


def test_unknown_section_names_its_line() -> None:
    assert "site.yaml:2: recever: unknown key" in error_of("site_name: A\nrecever:\n  port: 1\n")


def test_wrong_type_names_the_key_and_line() -> None:
    message = error_of("storage:\n  free_space_floor_mb: lots\n")
    assert message.startswith("site.yaml:2: storage.free_space_floor_mb:")
    assert "integer" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("receiver:\n  port: 70000\n", "site.yaml:2: receiver.port:"),
        ("receiver:\n  port: 0\n", "site.yaml:2: receiver.port:"),
        ("receiver:\n  ae_title: THIS_TITLE_IS_TOO_LONG\n", "site.yaml:2: receiver.ae_title:"),
        ("receiver:\n  ae_title: 'A\\\\B'\n", "site.yaml:2: receiver.ae_title:"),
        ("receiver:\n  max_pdu_bytes: 100\n", "site.yaml:2: receiver.max_pdu_bytes:"),
        ("receiver:\n  allowed_networks: [10.0.0.0/8, lan]\n", "receiver.allowed_networks.1:"),
        ("receiver:\n  allowed_calling_aets:\n    - OK\n    - ''\n", "site.yaml:4:"),
        ("jobs:\n  max_attempts: 0\n", "site.yaml:2: jobs.max_attempts:"),
        ("storage:\n  free_space_floor_mb: -1\n", "site.yaml:2: storage.free_space_floor_mb:"),
        ("logging:\n  level: LOUD\n", "site.yaml:2: logging.level:"),
        ("receiver:\n  port: true\n", "site.yaml:2: receiver: port: expected a number, got true"),
        ("jobs:\n  retry_delay_s: no\n", "jobs: retry_delay_s: expected a number, got false"),
        ("ui:\n  port: 11112\n", "ui.port and receiver.port are both 11112"),
    ],
)
def test_impossible_values_name_the_key(text: str, expected: str) -> None:
    assert expected in error_of(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "receiver:\n  extra_sop_classes: [1.2.03.4]\n",
            "site.yaml:2: receiver.extra_sop_classes.0: '1.2.03.4' is not a DICOM UID",
        ),
        ("receiver:\n  extra_sop_classes: ['" + "1." * 32 + "1']\n", "is not a DICOM UID"),
        ("receiver:\n  max_dataset_mb: 0\n", "site.yaml:2: receiver.max_dataset_mb:"),
        ("receiver:\n  max_image_megapixels: 0\n", "site.yaml:2: receiver.max_image_megapixels:"),
        (
            "routing:\n  body_part_keywords:\n    CHEST: [THORAX]\n    SPINE: [Thorax]\n",
            "keyword 'THORAX' is listed under both CHEST and SPINE",
        ),
        (
            "routing:\n  body_part_keywords:\n    'CHEST!': [THORAX]\n",
            "body part 'CHEST!' is not a DICOM code string",
        ),
    ],
)
def test_receiver_limits_and_routing_keywords_name_the_key(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_routing_keywords_are_folded_and_a_private_class_is_taken() -> None:
    settings = parse_settings(
        "receiver:\n  extra_sop_classes: [1.2.826.0.1.3680043.9.1234.1]\n"
        "routing:\n  body_part_keywords:\n    chest: [tórax,  chest  pa, TORAX]\n",
        "site.yaml",
    )
    assert settings.receiver.extra_sop_classes == ["1.2.826.0.1.3680043.9.1234.1"]
    assert settings.routing.body_part_keywords == {"CHEST": ("TORAX", "CHEST PA")}


def test_several_errors_are_reported_together() -> None:
    message = error_of("receiver:\n  port: -1\njobs:\n  lease_s: 1\n")
    assert "receiver.port" in message and "jobs.lease_s" in message


def test_yaml_syntax_error_gives_the_line() -> None:
    message = error_of("receiver:\n  port: [1, 2\nstorage: {}\n")
    assert message.startswith("site.yaml:3: not valid YAML")


def test_a_key_written_twice_is_refused_with_its_line() -> None:
    message = error_of("receiver:\n  port: 11112\nui:\n  port: 8080\nreceiver:\n  port: 104\n")
    assert message == "site.yaml:5: not valid YAML: the key 'receiver' is written twice"
    nested = error_of("receiver:\n  port: 11112\n  port: 104\n")
    assert nested.startswith("site.yaml:3:") and "'port' is written twice" in nested


@pytest.mark.parametrize("key", ["? [a, b]\n: x\n", "? {a: 1}\n: x\n"])
def test_a_key_that_is_a_list_or_mapping_is_refused_with_its_line(key: str) -> None:
    message = error_of("receiver:\n  port: 11112\n" + key)
    assert message == "site.yaml:3: not valid YAML: a key must be a plain word or number"


def test_a_value_yaml_cannot_build_is_a_config_error() -> None:
    assert "month must be in 1..12" in error_of("site_name: 2026-13-45\n")
    assert "nested too deeply" in error_of("site_name: " + "[" * 5000 + "]" * 5000 + "\n")


def test_yaml_merge_keys_still_work_and_may_be_overridden() -> None:
    settings = parse_settings("receiver:\n  <<: {port: 104, ae_title: SITE}\n  port: 4242\n")
    assert (settings.receiver.port, settings.receiver.ae_title) == (4242, "SITE")
    # An anchor merged into another section, with its key overridden there.
    shared = parse_settings(
        "receiver: &net {bind_address: 127.0.0.1, port: 104}\nui: {<<: *net, port: 8081}\n"
    )
    assert (shared.ui.bind_address, shared.ui.port) == ("127.0.0.1", 8081)


def test_top_level_must_be_a_mapping() -> None:
    assert "top level" in error_of("- a\n- b\n")


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


def test_data_dir_comes_from_config_then_systemd_then_default(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": "/var/lib/appliance", "CACHE_DIRECTORY": "/var/cache/appliance"}
    assert resolve_paths(Settings(), env).data_dir == Path("/var/lib/appliance")
    assert resolve_paths(Settings(), env).cache_dir == Path("/var/cache/appliance")
    configured = parse_settings(f"storage:\n  data_dir: {tmp_path}\n")
    assert resolve_paths(configured, env).data_dir == tmp_path
    assert resolve_paths(Settings(), {}).data_dir == (Path.cwd() / "var" / "data")


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("receiver:\n  port: 4242\n")
    assert main(["check-config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("receiver:\n  prot: 4242\n")
    assert main(["check-config", str(bad)]) == 2
    assert "bad.yaml:2: receiver.prot: unknown key" in capsys.readouterr().err
