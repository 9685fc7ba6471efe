"""`python -m appliance.cli`: the drover CLI without the console script (tests, a bare checkout)."""

import sys

from appliance.cli import main

sys.exit(main())
