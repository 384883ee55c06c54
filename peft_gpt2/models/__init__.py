"""Base models (hub, folder, GGUF, offline presets, 8/4-bit) and the PEFT methods that adapt them."""
