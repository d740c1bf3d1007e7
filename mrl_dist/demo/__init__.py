"""The embedded demo: synthetic voices, their VoxCeleb-layout corpus, and the demo's main job
(`launch/demo.py`). Tests use it as a fixture; nothing in the library depends on it."""
