"""Platform patches: applied in every vLLM process (main, EngineCore, workers) before the engine is
configured. There are none today; a new one is a module ``patch_<name>.py`` here with an ``apply()``
function and a registry entry with process ``platform`` (see ``patch/README.md``)."""
