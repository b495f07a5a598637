"""The alert engine: rules evaluated as reports arrive, routed to on-call hooks.

``model`` holds what crosses module lines (an alert, a notification); ``rules`` and
``expr`` read rule files; ``engine`` keeps each alert's pending/firing state; the routing,
silences, inhibition and delivery modules decide who hears about it and make sure they do.
"""
