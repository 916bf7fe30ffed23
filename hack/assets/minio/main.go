// Command minio is a thin wrapper around github.com/minio/minio/cmd so that a pinned MinIO can be
// built from the Go module proxy (test tooling only; see hack/test-assets.sh).
package main

import (
	"os"

	minio "github.com/minio/minio/cmd"
)

func main() {
	minio.Main(os.Args)
}
