"""The rehearsal cache: every pretrained path rsseg uses, with random weights, offline (docs/rehearsal.md)."""
