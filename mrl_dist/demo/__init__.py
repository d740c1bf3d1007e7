"""The embedded demo: synthetic voices, their VoxCeleb-layout corpus, and the demo's main job
(`launch/demo.py`). Tests use it as a fixture; nothing in the library depends on it.

This front exports nothing: import each name from its module (`mrl_dist.demo.corpus.make_demo_corpus`,
`mrl_dist.demo.run.run_demo`), so that making the demo corpus never imports torch or the trainer.
"""
