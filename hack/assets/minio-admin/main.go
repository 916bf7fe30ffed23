// Command minio-admin creates users and policies on a local MinIO through its admin API
// (github.com/minio/madmin-go), so that tests can run a client with less than the root user's
// rights. Test tooling only; see hack/test-assets.sh.
//
// Usage, with the root credentials in MINIO_ROOT_USER and MINIO_ROOT_PASSWORD:
//
//	minio-admin HOST:PORT put-policy NAME FILE    create or replace policy NAME (JSON in FILE)
//	minio-admin HOST:PORT add-user USER SECRET NAME   create USER with policy NAME attached
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/minio/madmin-go/v3"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "minio-admin: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: minio-admin HOST:PORT put-policy NAME FILE | add-user USER SECRET POLICY")
	}
	admin, err := madmin.New(args[0], os.Getenv("MINIO_ROOT_USER"), os.Getenv("MINIO_ROOT_PASSWORD"), false)
	if err != nil {
		return fmt.Errorf("admin client for %s: %w", args[0], err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch cmd := args[1]; {
	case cmd == "put-policy" && len(args) == 4:
		policy, err := os.ReadFile(args[3])
		if err != nil {
			return err
		}
		if err := admin.AddCannedPolicy(ctx, args[2], policy); err != nil {
			return fmt.Errorf("put-policy %s: %w", args[2], err)
		}
	case cmd == "add-user" && len(args) == 5:
		if err := admin.AddUser(ctx, args[2], args[3]); err != nil {
			return fmt.Errorf("add-user %s: %w", args[2], err)
		}
		req := madmin.PolicyAssociationReq{Policies: []string{args[4]}, User: args[2]}
		if _, err := admin.AttachPolicy(ctx, req); err != nil {
			return fmt.Errorf("attach policy %s to %s: %w", args[4], args[2], err)
		}
	default:
		return fmt.Errorf("unknown command %q with %d arguments", cmd, len(args)-2)
	}
	return nil
}
