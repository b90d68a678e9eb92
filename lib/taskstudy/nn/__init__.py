"""Networks and their training: the encoder and decoders, the one training loop, readouts trained side by side,
and the machine they run on with the kernels resolved for it (`machine`)."""
