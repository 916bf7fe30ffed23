// Command etcd is a thin wrapper around go.etcd.io/etcd/server/v3/etcdmain so that a pinned
// etcd can be built from the Go module proxy (test tooling only; see hack/test-assets.sh).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
