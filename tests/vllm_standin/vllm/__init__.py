"""Stand-in for vLLM (tests only): see tests/vllm_standin/README.md."""

import os

API = os.environ.get("VLLM_STANDIN_API", "0.11")
__version__ = "0.11.0" if API == "0.11" else "0.10.1rc2.dev263+g2f13319f4"
