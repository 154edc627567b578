// minio-admin: the few MinIO admin calls the test harness needs (user, canned policy, attach),
// built by scripts/build-minio.sh into a throw-away module next to MinIO itself, with the
// madmin-go version MinIO's own go.mod pins. The admin API encrypts request bodies with the
// caller's secret, which is why this is Go and not a few signed fetches from TypeScript.
//
// Usage (root credentials in MINIO_ROOT_USER / MINIO_ROOT_PASSWORD, user secret on stdin):
//
//	minio-admin <host:port> add-user <accessKey>          (secret key read from stdin)
//	minio-admin <host:port> add-policy <name> <file.json>
//	minio-admin <host:port> attach-policy <name> <user>
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/minio/madmin-go/v3"
)

func main() {
	if len(os.Args) < 3 {
		fail("usage: minio-admin <host:port> add-user|add-policy|attach-policy ...")
	}
	adm, err := madmin.New(os.Args[1], os.Getenv("MINIO_ROOT_USER"), os.Getenv("MINIO_ROOT_PASSWORD"), false)
	if err != nil {
		fail("client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := os.Args[3:]
	switch os.Args[2] {
	case "add-user":
		need(args, 1)
		secret, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && secret == "" {
			fail("reading the secret key from stdin: %v", err)
		}
		err = adm.AddUser(ctx, args[0], strings.TrimRight(secret, "\r\n"))
		check("add-user", err)
	case "add-policy":
		need(args, 2)
		doc, err := os.ReadFile(args[1])
		check("reading policy", err)
		check("add-policy", adm.AddCannedPolicy(ctx, args[0], doc))
	case "attach-policy":
		need(args, 2)
		_, err := adm.AttachPolicy(ctx, madmin.PolicyAssociationReq{Policies: []string{args[0]}, User: args[1]})
		check("attach-policy", err)
	default:
		fail("unknown command %q", os.Args[2])
	}
}

func need(args []string, n int) {
	if len(args) != n {
		fail("expected %d arguments, got %d", n, len(args))
	}
}

func check(what string, err error) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "minio-admin: "+format+"\n", a...)
	os.Exit(1)
}
