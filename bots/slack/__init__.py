"""The Slack bot: chat with the gateway from Slack (direct messages, mentions, assistant
threads), each answer through the same pipeline as the HTTP API, and the gateway's alerts.

Modules: :mod:`.plugin` (the ``slack`` plugin: settings, ``POST /slack/events``, lifetime),
:mod:`.app` (the slack-bolt app and where listeners are registered), :mod:`.chat` (questions
and answers), :mod:`.reply` (writing an answer into a thread: streamed, or posted and edited),
:mod:`.formatting` (Markdown to mrkdwn, cutting long text, Block Kit), :mod:`.buttons` (feedback,
"Ask a stronger model", "Why this model?"), :mod:`.commands` (``/turnout``), :mod:`.home` (the
App Home tab), :mod:`.alerts` (alerts posted, updated in place, acknowledged and muted),
:mod:`.security`
(allowlists, who a Slack user asks as, answering each event once), :mod:`.history` (a thread's
conversation in the shared store), :mod:`.settings` (the ``[slack]`` table). Setup:
``docs/slack.md``; the app's manifest: ``manifest.yml`` here.
"""
