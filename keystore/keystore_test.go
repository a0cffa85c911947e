package keystore

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "private.key")
	k1, created, err := LoadOrCreate(path)
	if err != nil || !created {
		t.Fatalf("first LoadOrCreate: created=%v err=%v", created, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("key file mode = %04o, want 0600", got)
	}
	k2, created, err := LoadOrCreate(path)
	if err != nil || created {
		t.Fatalf("second LoadOrCreate: created=%v err=%v", created, err)
	}
	if k1.WG() != k2.WG() {
		t.Error("second LoadOrCreate returned a different key")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("key directory holds %d files, want only the key (no temporary files left)", len(entries))
	}
}

func TestLoadRefusesReadableKey(t *testing.T) {
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o666} {
		t.Run(fmt.Sprintf("%04o", mode), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "private.key")
			k, err := Generate()
			if err != nil {
				t.Fatal(err)
			}
			if err := Save(path, k); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
			_, err = Load(path)
			if !errors.Is(err, ErrInsecureMode) {
				t.Fatalf("Load of a %04o key: err = %v, want ErrInsecureMode", mode, err)
			}
			if _, _, err := LoadOrCreate(path); !errors.Is(err, ErrInsecureMode) {
				t.Fatalf("LoadOrCreate of a %04o key: err = %v, want ErrInsecureMode", mode, err)
			}
		})
	}
}

func TestLoadRejectsGarbage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "private.key")
	secret := "not-a-key-but-secret-looking"
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil {
		t.Fatal("Load of garbage succeeded")
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error %q repeats the file's content", err)
	}
}

func TestNeverPrintsSecret(t *testing.T) {
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	secret := k.WG().String()
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("key", "key", k)
	for name, s := range map[string]string{
		"String": k.String(),
		"%v":     fmt.Sprintf("%v", k),
		"%+v":    fmt.Sprintf("%+v", k),
		"slog":   logged.String(),
		"%s":     fmt.Sprintf("[%s]", k),
		"%#v":    fmt.Sprintf("%#v", k),
		"%x":     fmt.Sprintf("%x", k),
	} {
		if strings.Contains(s, secret) {
			t.Errorf("%s prints the private key: %q", name, s)
		}
	}
	if !strings.Contains(k.String(), k.Public().String()) {
		t.Errorf("String() = %q, want it to name the public key", k.String())
	}
}
