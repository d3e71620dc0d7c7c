module gguf-forge/tests/go/render

go 1.19
