// Command wasmfetch pulls a Wasm module the way istio-agent does for a
// WasmPlugin `url: oci://...`: with Istio's own image fetcher
// (istio.io/istio/pkg/wasm, at the version this wrapper module pins), and
// writes the module it extracted to a file. tests/tests/images.rs runs it
// against the filter image served from a loopback registry.
//
//	wasmfetch REFERENCE OUT.wasm
//
// It prints the image digest Istio saw ("sha256:<hex>") on stdout.
// The registry may be plain HTTP (Istio's fetcher falls back to it).
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"istio.io/istio/pkg/wasm"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: wasmfetch REFERENCE OUT.wasm")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := wasm.NewImageFetcher(ctx, wasm.ImageFetcherOption{Insecure: true})
	fetch, digest, err := f.PrepareFetch(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "prepare:", err)
		os.Exit(1)
	}
	module, err := fetch()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fetch:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(os.Args[2], module, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("sha256:%s\n", digest)
}
