package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"slices"
	"time"
)

const revocationContext = "meshd-revocation-v1\x00"

// Revocation is an authority's word that a node, or an identity key,
// is no longer vouched for: every credential it names stops verifying
// (Revokes), whatever its not-after.
type Revocation struct {
	Authority ed25519.PublicKey // the key that signed it
	// Exactly one of Node and Identity is set.
	Node     string
	Identity ed25519.PublicKey
	Issued   time.Time // to the second
}

// Revoke signs r with a: the revocation's bytes, its body then the
// signature. r.Authority is set to a's public key.
func (a AuthorityKey) Revoke(r Revocation) ([]byte, error) {
	r.Authority = a.Public()
	body, err := r.body()
	if err != nil {
		return nil, err
	}
	return append(body, ed25519.Sign(a.priv, append([]byte(revocationContext), body...))...), nil
}

// body: version | authority 32 | kind (1 node, 2 identity) | node
// (length-prefixed) or identity 32 | issued i64.
func (r Revocation) body() ([]byte, error) {
	if len(r.Authority) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: keys are %d bytes", ErrMalformed, ed25519.PublicKeySize)
	}
	var b bytes.Buffer
	b.WriteByte(Version)
	b.Write(r.Authority)
	switch {
	case r.Node != "" && r.Identity == nil:
		if len(r.Node) > maxNode {
			return nil, fmt.Errorf("%w: node %q is longer than %d bytes", ErrMalformed, r.Node, maxNode)
		}
		b.WriteByte(1)
		writeString(&b, r.Node)
	case r.Node == "" && len(r.Identity) == ed25519.PublicKeySize:
		b.WriteByte(2)
		b.Write(r.Identity)
	default:
		return nil, fmt.Errorf("%w: a revocation names a node or an identity key, not both", ErrMalformed)
	}
	binary.Write(&b, binary.BigEndian, r.Issued.Unix())
	return b.Bytes(), nil
}

// ParseRevocation reads a revocation's bytes, unverified; like
// ParseCredential, an encoding has exactly one reading.
func ParseRevocation(b []byte) (Revocation, []byte, error) {
	rd := &reader{b: b}
	if v := rd.byte(); rd.err == nil && v != Version {
		return Revocation{}, nil, fmt.Errorf("%w: revocation version %d, want %d", ErrMalformed, v, Version)
	}
	var r Revocation
	r.Authority = ed25519.PublicKey(rd.take(ed25519.PublicKeySize))
	switch kind := rd.byte(); {
	case rd.err != nil:
	case kind == 1:
		r.Node = rd.string(maxNode)
	case kind == 2:
		r.Identity = ed25519.PublicKey(rd.take(ed25519.PublicKeySize))
	default:
		return Revocation{}, nil, fmt.Errorf("%w: revocation kind %d", ErrMalformed, kind)
	}
	r.Issued = time.Unix(int64(binary.BigEndian.Uint64(rd.take(8))), 0).UTC()
	sig := rd.take(ed25519.SignatureSize)
	if rd.err != nil {
		return Revocation{}, nil, rd.err
	}
	if len(rd.b) != 0 {
		return Revocation{}, nil, fmt.Errorf("%w: %d bytes after the signature", ErrMalformed, len(rd.b))
	}
	return r, sig, nil
}

// VerifyRevocation parses and verifies a revocation signed by one of
// trusted.
func VerifyRevocation(b []byte, trusted []ed25519.PublicKey) (Revocation, error) {
	r, sig, err := ParseRevocation(b)
	if err != nil {
		return Revocation{}, err
	}
	if !slices.ContainsFunc(trusted, func(k ed25519.PublicKey) bool { return k.Equal(r.Authority) }) {
		return Revocation{}, fmt.Errorf("%w (revocation signed by %s)", ErrUntrusted, base64.StdEncoding.EncodeToString(r.Authority))
	}
	if !verify(r.Authority, append([]byte(revocationContext), b[:len(b)-ed25519.SignatureSize]...), sig) {
		return Revocation{}, fmt.Errorf("%w: revocation", ErrBadSig)
	}
	return r, nil
}

// Revokes reports whether r (verified) withdraws c: it names c's node or
// its identity key. Any trusted authority may revoke any credential: an
// authority rotated out still had to be trusted to sign it.
func (r Revocation) Revokes(c Credential) bool {
	return r.Node != "" && r.Node == c.Node || r.Identity != nil && r.Identity.Equal(c.Identity)
}
