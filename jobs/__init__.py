"""Jobs and launchers: the only layer that knows about configs.

Importing it registers the settings nodes that conf/ files name (see ``jobs.config``).
"""

from jobs.config import register_settings

register_settings()
