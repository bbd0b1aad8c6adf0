"""The page form's starting values: the API's defaults, or STUB_FORM_DEFAULTS (what `make studio` sets)."""

from __future__ import annotations

import json

import pytest

from orchestrator_stub.page import form_fields
from orchestrator_stub.settings import StubSettingsError, load_settings
from orchestrator_stub.studio import FORM_DEFAULTS
from worker_app_fastwan.core.schema import JobInput
from worker_app_fastwan.miniature.world import parse_prompt


def test_the_form_starts_with_the_apis_defaults_unless_told_otherwise() -> None:
    plain = form_fields()
    assert plain["width"]["default"] == JobInput.model_fields["width"].default
    assert plain["prompt"]["default"] is None
    told = form_fields({"width": 128, "num_frames": 17, "prompt": "a blue square standing still"})
    assert (told["width"]["default"], told["num_frames"]["default"]) == (128, 17)
    assert told["height"]["default"] == JobInput.model_fields["height"].default  # what it was not told stays
    assert told["prompt"]["default"] == "a blue square standing still"
    assert told["width"]["min"] == plain["width"]["min"]  # limits are the API's whatever the defaults


def test_studio_starts_the_form_with_a_job_of_the_miniatures_world() -> None:
    settings = load_settings(None, INTERNAL_API_KEY="k", STUB_FORM_DEFAULTS=json.dumps(FORM_DEFAULTS))
    fields = form_fields(settings.STUB_FORM_DEFAULTS)
    assert [fields[n]["default"] for n in ("width", "height", "num_frames")] == [128, 128, 17]
    assert parse_prompt(str(fields["prompt"]["default"])) is not None


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ('{"width": 100}', "width"),  # not a multiple of 32
        ('{"num_frames": 18}', "num_frames"),
        ('{"colour": "red"}', "colour: not a form field"),
        ('{"width": ', "STUB_FORM_DEFAULTS"),
    ],
)
def test_a_form_default_the_api_would_refuse_is_a_one_line_settings_error(value: str, named: str) -> None:
    with pytest.raises(StubSettingsError) as caught:
        load_settings(None, INTERNAL_API_KEY="k", STUB_FORM_DEFAULTS=value)
    message = str(caught.value)
    assert "STUB_FORM_DEFAULTS" in message and named in message and "\n" not in message, message


def test_the_environment_variable_is_read_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUB_FORM_DEFAULTS", '{"height": 256, "prompt": "a green circle moving up"}')
    assert load_settings(None, INTERNAL_API_KEY="k").STUB_FORM_DEFAULTS == {
        "height": 256,
        "prompt": "a green circle moving up",
    }
    monkeypatch.setenv("STUB_FORM_DEFAULTS", "{height: 256}")
    with pytest.raises(StubSettingsError, match="STUB_FORM_DEFAULTS: .*not JSON"):
        load_settings(None, INTERNAL_API_KEY="k")
