"""`python3 -m nodeagent`: the node agent as drover-agent.service runs it on a booted node."""

import sys

from nodeagent.agent import main

sys.exit(main())
