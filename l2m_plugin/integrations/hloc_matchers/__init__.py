"""hloc matcher modules shipped by l2m_plugin (imported by hloc as ``hloc.matchers.<name>``).

This folder is appended to ``hloc.matchers.__path__`` by
:func:`l2m_plugin.integrations.hloc.register`; its modules import hloc and are not
meant to be imported through this package.
"""
