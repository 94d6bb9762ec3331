"""Worker patches: applied in every process, effective where vLLM builds its distributed groups (the
workers). Each module ``patch_<name>.py`` has an ``apply()`` function and a registry entry with
process ``worker`` (see ``patch/README.md``)."""
