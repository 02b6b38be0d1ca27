"""Operator tools: the ``meshctl`` CLI and its Textual dashboard."""
