// kstatus-check reads one Kubernetes object as JSON on stdin and prints what
// kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, the library behind
// Flux's health checks and kstatus-based CLIs) says of it, as JSON:
//
//	{"status":"Failed","message":"..."}
//
// `kstatus-check --version` prints the cli-utils version it was built from.
// A test tool (tests/gitops.rs), not part of the product.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

const library = "sigs.k8s.io/cli-utils"

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println(libraryVersion())
		return
	}
	if len(os.Args) != 1 {
		fail(fmt.Errorf("usage: kstatus-check [--version] < object.json"))
	}
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(fmt.Errorf("reading stdin: %w", err))
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(in); err != nil {
		fail(fmt.Errorf("stdin is not a Kubernetes object: %w", err))
	}
	res, err := status.Compute(u)
	if err != nil {
		fail(fmt.Errorf("kstatus: %w", err))
	}
	out, err := json.Marshal(map[string]string{
		"status":  res.Status.String(),
		"message": res.Message,
	})
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

// libraryVersion names the cli-utils module this binary was built from.
func libraryVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == library {
				return library + " " + dep.Version
			}
		}
	}
	return library + " (unknown version)"
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus-check:", err)
	os.Exit(1)
}
