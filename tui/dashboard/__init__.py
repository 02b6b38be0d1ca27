"""``meshctl dashboard``: a Textual app over controld's API (see docs/dashboard.md).

Modules: :mod:`.source` (the data seam), :mod:`.http` (controld), :mod:`.fake` (tests),
:mod:`.state` (one refresh), :mod:`.edits` and :mod:`.control` (actions), :mod:`.views`,
:mod:`.screens`, :mod:`.app`.
"""
