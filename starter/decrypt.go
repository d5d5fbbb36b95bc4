package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/bulkflow/bulkflow/internal/atrest"
	"github.com/bulkflow/bulkflow/internal/envflag"
)

const decryptHelp = `Decrypts one file that bulkflow encrypted at rest, streaming: memory stays
flat whatever the size. Every 1 MB segment is authenticated, so a modified,
truncated or swapped file is refused (exit 1) instead of decrypted wrongly.

Each file is encrypted with its object name relative to the run as associated
data, e.g. Patient/Patient-0001.ndjson for <output>/<run>/Patient/Patient-0001.ndjson:
a file renamed or copied over another decrypts only under its original name.
By default the name is IN's last two path elements; -name overrides it (for
a file that was moved, or read from stdin).

With OUT the plaintext is written to OUT.part and renamed to OUT only once
all of it decrypted. Without OUT it goes to stdout as it decrypts: on a
non-zero exit what was printed is authentic but incomplete; discard it.`

func runDecrypt(args []string, stdout, stderr io.Writer) int {
	fs := newFS("decrypt", stderr)
	ksPath := envflag.String(fs, "keyset", "BULKFLOW_KEYSET", "", "JSON keyset file (from starter keygen)")
	name := fs.String("name", "", "object name the file was encrypted under (default: IN's last two path elements)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: starter decrypt -keyset FILE [-name OBJECT-NAME] IN [OUT]\n\n%s\n\nFlags:\n", decryptHelp)
		fs.PrintDefaults()
	}
	pos, err := parseFlags(fs, args)
	if err == nil && (len(pos) < 1 || len(pos) > 2) {
		err = errors.New("give the encrypted file IN (or - for stdin) and optionally OUT")
	}
	if err == nil && *ksPath == "" {
		err = errors.New("give the keyset: -keyset FILE (or $BULKFLOW_KEYSET)")
	}
	if err != nil {
		return usageError(stderr, "decrypt", err)
	}
	if parseOnly {
		return exitOK
	}
	pos = append(pos, "")
	in, out := pos[0], pos[1]
	if *name == "" {
		if in == "-" {
			fmt.Fprintln(stderr, "starter: decrypting stdin needs -name")
			return exitUsage
		}
		*name = defaultObjectName(in)
	}
	ks, err := atrest.LoadKeyset(*ksPath)
	if err != nil {
		fmt.Fprintln(stderr, "starter:", err)
		return exitUsage
	}
	var src io.Reader = os.Stdin
	if in != "-" {
		f, err := os.Open(in)
		if err != nil {
			fmt.Fprintln(stderr, "starter:", err)
			return exitUsage
		}
		defer f.Close()
		src = f
	}
	plain := ks.DecryptingReader(src, *name)
	if out == "" || out == "-" {
		if _, err := io.Copy(stdout, plain); err != nil {
			return decryptFailed(stderr, in, *name, err)
		}
		return exitOK
	}
	if err := writeAtomic(out, plain); err != nil {
		return decryptFailed(stderr, in, *name, err)
	}
	return exitOK
}

func decryptFailed(stderr io.Writer, in, name string, err error) int {
	if errors.Is(err, atrest.ErrDecrypt) {
		fmt.Fprintf(stderr, "starter: %s (as %q): %v\n", in, name, err)
	} else {
		fmt.Fprintln(stderr, "starter:", err)
	}
	return exitFailed
}

// defaultObjectName is "<type dir>/<file>" from a path under a run directory.
func defaultObjectName(p string) string {
	parts := strings.Split(filepath.ToSlash(filepath.Clean(p)), "/")
	if len(parts) >= 2 {
		return parts[len(parts)-2] + "/" + parts[len(parts)-1]
	}
	return parts[len(parts)-1]
}

// writeAtomic writes r to path only if all of r reads without error: a
// half-decrypted file must not pass for the whole one.
func writeAtomic(path string, r io.Reader) error {
	tmp := path + ".part"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

func runKeygen(args []string, stdout, stderr io.Writer) int {
	fs := newFS("keygen", stderr)
	ksPath := fs.String("keyset", "", "keyset file to create (must not exist; written with mode 0600)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: starter keygen -keyset FILE

Writes a new Tink keyset (one AES256_GCM_HKDF_1MB streaming AEAD key) as
cleartext JSON for encryption at rest. Whoever reads this file can read every
file encrypted with it, and losing it loses them all: keep it out of the
output directory, with a backup in your secret store.

Flags:
`)
		fs.PrintDefaults()
	}
	pos, err := parseFlags(fs, args)
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("keygen takes no arguments, got %q", pos)
	}
	if err == nil && *ksPath == "" {
		err = errors.New("name the keyset file to create: -keyset FILE")
	}
	if err != nil {
		return usageError(stderr, "keygen", err)
	}
	if parseOnly {
		return exitOK
	}
	h, err := atrest.NewKeysetHandle()
	if err == nil {
		err = atrest.WriteKeyset(*ksPath, h)
	}
	if err != nil {
		fmt.Fprintln(stderr, "starter:", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "wrote keyset %s (AES256_GCM_HKDF_1MB, primary key id %d)\n", *ksPath, h.KeysetInfo().GetPrimaryKeyId())
	return exitOK
}
