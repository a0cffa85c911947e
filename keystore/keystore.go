package keystore

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/internal/atomicfile"
)

// ErrInsecureMode is returned when a key file can be read by group or others.
var ErrInsecureMode = errors.New("key file is readable by group or others (want mode 0600)")

// PrivateKey is a WireGuard private key. Its String and LogValue methods
// print only the public half.
type PrivateKey struct {
	k wgtypes.Key
}

// Generate makes a new random private key.
func Generate() (PrivateKey, error) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return PrivateKey{}, fmt.Errorf("generate private key: %w", err)
	}
	return PrivateKey{k: k}, nil
}

// Public returns the public key.
func (p PrivateKey) Public() wgtypes.Key { return p.k.PublicKey() }

// WG returns the key in the form wgctrl takes. Handle the result as a secret.
func (p PrivateKey) WG() wgtypes.Key { return p.k }

// String prints the public key only.
func (p PrivateKey) String() string { return "private key of " + p.Public().String() }

// GoString keeps the secret out of %#v.
func (p PrivateKey) GoString() string { return "keystore.PrivateKey{" + p.String() + "}" }

// LogValue keeps the secret out of structured logs.
func (p PrivateKey) LogValue() slog.Value { return slog.StringValue(p.String()) }

// Load reads the key at path. It refuses a file readable by group or others
// with an error wrapping ErrInsecureMode.
func Load(path string) (PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("open key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return PrivateKey{}, fmt.Errorf("stat key file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return PrivateKey{}, fmt.Errorf("%s has mode %04o: %w", path, st.Mode().Perm(), ErrInsecureMode)
	}
	buf := make([]byte, 256)
	n, err := f.Read(buf)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("read key file %s: %w", path, err)
	}
	k, err := Parse(string(buf[:n]))
	if err != nil {
		return PrivateKey{}, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// Parse decodes a base64 private key as `wg genkey` prints it. The error
// never contains the input.
func Parse(s string) (PrivateKey, error) {
	k, err := wgtypes.ParseKey(strings.TrimSpace(s))
	if err != nil {
		return PrivateKey{}, errors.New("expected a base64-encoded 32-byte WireGuard private key")
	}
	return PrivateKey{k: k}, nil
}

// Save writes the key to path with mode 0600, atomically, creating the
// directory (mode 0700) if needed.
func Save(path string, k PrivateKey) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create key directory: %w", err)
	}
	return atomicfile.WriteFile(path, []byte(k.k.String()+"\n"), 0o600)
}

// LoadOrCreate loads the key at path, or creates and saves a new one when
// the file does not exist. created says which happened.
func LoadOrCreate(path string) (k PrivateKey, created bool, err error) {
	k, err = Load(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, false, err
	}
	k, err = Generate()
	if err != nil {
		return PrivateKey{}, false, err
	}
	if err := Save(path, k); err != nil {
		return PrivateKey{}, false, err
	}
	return k, true, nil
}
