"""The round loop and the selection orchestration: the only code that orders stages."""
