"""Loading a model that is not on this machine: the error says how to get it with a command that exists."""

import re
from importlib.metadata import distribution

import pytest

from videotome.loading import resolve_model_dir


def test_a_missing_model_names_an_installed_download_command():
    with pytest.raises(ValueError, match="is not a local directory nor in the Hugging Face cache") as caught:
        resolve_model_dir("no-such-org/no-such-model")
    command = re.search(r"e\.g\. (\S+) download no-such-org/no-such-model", str(caught.value)).group(1)
    scripts = {e.name for e in distribution("huggingface_hub").entry_points if e.group == "console_scripts"}
    assert command in scripts
