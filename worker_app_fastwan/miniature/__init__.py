"""A miniature of FastWan2.2-TI2V-5B, trained on this machine's CPU on a synthetic world (`world`).

The same diffusers and transformers classes as production (WanTransformer3DModel with Wan 2.2 TI2V's options,
AutoencoderKLWan with the 2.2 layout, a UMT5 encoder and a T5 tokenizer), narrow enough to train in under
an hour on two cores (`train`), sampled by the production path unchanged. Its weights ship in `weights/`;
the `tiny` backend loads them. `measure` reads colour, shape and motion back from decoded frames.
"""
