package trust

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Domain separation: the first bytes of every signed message.
const (
	credentialContext = "meshd-credential-v1\x00"
	entryContext      = "meshd-entry-v1\x00"
)

// Version is the format version both messages carry.
const Version = 1

// Limits of the encoded fields (Consul's Meta values are 512 characters:
// a credential is at most 32+1+63+17+32+1+4*(1+32)+8+64 = 350 bytes, 468
// in base64).
const (
	maxNode     = 63
	maxRoles    = 4
	maxRole     = 32
	maxEndpoint = 64
)

// ErrUntrusted and the errors below are what verification returns, each
// wrapped with the detail; status shows them as rejection reasons.
var (
	ErrMalformed = errors.New("malformed")
	ErrUntrusted = errors.New("credential not signed by a trusted authority")
	ErrExpired   = errors.New("credential expired")
	ErrBadSig    = errors.New("signature does not verify")
	ErrMismatch  = errors.New("entry does not match its credential")
)

// AuthorityKey is an authority's private key. It never prints: String and
// GoString give the public key.
type AuthorityKey struct{ priv ed25519.PrivateKey }

// GenerateAuthority makes a new authority key.
func GenerateAuthority() (AuthorityKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	return AuthorityKey{priv}, err
}

// AuthorityFromSeed is the authority key of a 32-byte seed (the key file's
// content).
func AuthorityFromSeed(seed []byte) (AuthorityKey, error) {
	if len(seed) != ed25519.SeedSize {
		return AuthorityKey{}, fmt.Errorf("%w: an authority seed is %d bytes, not %d", ErrMalformed, ed25519.SeedSize, len(seed))
	}
	return AuthorityKey{ed25519.NewKeyFromSeed(seed)}, nil
}

// Seed is what the authority's key file holds.
func (a AuthorityKey) Seed() []byte { return a.priv.Seed() }

// Public is the authority's public key, the value of trust.authorities.
func (a AuthorityKey) Public() ed25519.PublicKey { return a.priv.Public().(ed25519.PublicKey) }

func (a AuthorityKey) String() string {
	return "authority " + base64.StdEncoding.EncodeToString(a.Public())
}

// GoString keeps %#v from printing the private key.
func (a AuthorityKey) GoString() string { return a.String() }

// Credential is what an authority vouches for: this node, with this prefix
// and roles, is the holder of Identity until NotAfter.
type Credential struct {
	Authority ed25519.PublicKey // the key that signed it
	Node      string
	Prefix    netip.Prefix
	Identity  ed25519.PublicKey
	Roles     []string
	NotAfter  time.Time // to the second
}

// Issue signs c with a: the credential's bytes, its body then the
// signature. c.Authority is set to a's public key.
func (a AuthorityKey) Issue(c Credential) ([]byte, error) {
	c.Authority = a.Public()
	body, err := c.body()
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(a.priv, append([]byte(credentialContext), body...))
	return append(body, sig...), nil
}

// body is the credential's canonical encoding, without the context.
func (c Credential) body() ([]byte, error) {
	if len(c.Authority) != ed25519.PublicKeySize || len(c.Identity) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: keys are %d bytes", ErrMalformed, ed25519.PublicKeySize)
	}
	if len(c.Node) == 0 || len(c.Node) > maxNode {
		return nil, fmt.Errorf("%w: node %q is not 1 to %d bytes", ErrMalformed, c.Node, maxNode)
	}
	if !c.Prefix.IsValid() || !c.Prefix.Addr().Is6() || c.Prefix.Masked() != c.Prefix {
		return nil, fmt.Errorf("%w: prefix %s is not a masked IPv6 CIDR", ErrMalformed, c.Prefix)
	}
	if len(c.Roles) > maxRoles {
		return nil, fmt.Errorf("%w: %d roles, at most %d", ErrMalformed, len(c.Roles), maxRoles)
	}
	var b bytes.Buffer
	b.WriteByte(Version)
	b.Write(c.Authority)
	writeString(&b, c.Node)
	a16 := c.Prefix.Addr().As16()
	b.Write(a16[:])
	b.WriteByte(byte(c.Prefix.Bits()))
	b.Write(c.Identity)
	b.WriteByte(byte(len(c.Roles)))
	for _, r := range c.Roles {
		if len(r) == 0 || len(r) > maxRole {
			return nil, fmt.Errorf("%w: role %q is not 1 to %d bytes", ErrMalformed, r, maxRole)
		}
		writeString(&b, r)
	}
	binary.Write(&b, binary.BigEndian, c.NotAfter.Unix())
	return b.Bytes(), nil
}

func writeString(b *bytes.Buffer, s string) {
	b.WriteByte(byte(len(s)))
	b.WriteString(s)
}

// reader reads a canonical encoding; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil || n > len(r.b) {
		if r.err == nil {
			r.err = fmt.Errorf("%w: truncated", ErrMalformed)
		}
		return make([]byte, n)
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) byte() byte { return r.take(1)[0] }

func (r *reader) string(max int) string {
	n := int(r.byte())
	if n == 0 || n > max {
		if r.err == nil {
			r.err = fmt.Errorf("%w: a string of %d bytes, want 1 to %d", ErrMalformed, n, max)
		}
		return ""
	}
	return string(r.take(n))
}

// ParseCredential reads a credential's bytes: its fields and its
// signature, unverified (VerifyCredential verifies). Any byte out of place
// is an error: an encoding has exactly one reading.
func ParseCredential(b []byte) (Credential, []byte, error) {
	r := &reader{b: b}
	if v := r.byte(); r.err == nil && v != Version {
		return Credential{}, nil, fmt.Errorf("%w: credential version %d, want %d", ErrMalformed, v, Version)
	}
	var c Credential
	c.Authority = ed25519.PublicKey(r.take(ed25519.PublicKeySize))
	c.Node = r.string(maxNode)
	a16 := r.take(16)
	bits := int(r.byte())
	c.Prefix = netip.PrefixFrom(netip.AddrFrom16([16]byte(a16)), bits)
	c.Identity = ed25519.PublicKey(r.take(ed25519.PublicKeySize))
	n := int(r.byte())
	if n > maxRoles && r.err == nil {
		r.err = fmt.Errorf("%w: %d roles, at most %d", ErrMalformed, n, maxRoles)
	}
	for i := 0; i < n && r.err == nil; i++ {
		c.Roles = append(c.Roles, r.string(maxRole))
	}
	c.NotAfter = time.Unix(int64(binary.BigEndian.Uint64(r.take(8))), 0).UTC()
	sig := r.take(ed25519.SignatureSize)
	if r.err != nil {
		return Credential{}, nil, r.err
	}
	if len(r.b) != 0 {
		return Credential{}, nil, fmt.Errorf("%w: %d bytes after the signature", ErrMalformed, len(r.b))
	}
	if bits > 128 || !c.Prefix.IsValid() || c.Prefix.Addr().Is4In6() || c.Prefix.Masked() != c.Prefix {
		return Credential{}, nil, fmt.Errorf("%w: prefix %s is not a masked IPv6 CIDR", ErrMalformed, c.Prefix)
	}
	return c, sig, nil
}

// VerifyCredential parses and verifies a credential: signed by one of
// trusted, not expired at now.
func VerifyCredential(b []byte, trusted []ed25519.PublicKey, now time.Time) (Credential, error) {
	c, err := checkCredential(Single{}, b, trusted)
	if err == nil && !now.Before(c.NotAfter) {
		return Credential{}, fmt.Errorf("%w at %s", ErrExpired, c.NotAfter.Format(time.RFC3339))
	}
	return c, err
}

// checkCredential is VerifyCredential without the expiry.
func checkCredential(v Verifier, b []byte, trusted []ed25519.PublicKey) (Credential, error) {
	c, sig, err := ParseCredential(b)
	if err != nil {
		return Credential{}, err
	}
	if !slices.ContainsFunc(trusted, func(k ed25519.PublicKey) bool { return k.Equal(c.Authority) }) {
		return Credential{}, fmt.Errorf("%w (signed by %s)", ErrUntrusted, base64.StdEncoding.EncodeToString(c.Authority))
	}
	body := b[:len(b)-ed25519.SignatureSize]
	if !v.Check(c.Authority, append([]byte(credentialContext), body...), sig) {
		return Credential{}, fmt.Errorf("%w: credential of %s", ErrBadSig, c.Node)
	}
	return c, nil
}

// Claims are everything a peer uses of an entry, and the serial that only
// grows: what the host's identity signs.
type Claims struct {
	Node      string
	PublicKey wgtypes.Key
	Endpoint  netip.AddrPort
	Prefix    netip.Prefix
	Keepalive time.Duration // whole seconds
	// GatewayKey and GatewayEndpoint are a gateway's user link (zero on
	// other hosts).
	GatewayKey      wgtypes.Key
	GatewayEndpoint netip.AddrPort
	Serial          uint64
}

// Bytes is the claims' canonical encoding, context first: what is signed.
func (c Claims) Bytes() []byte {
	var b bytes.Buffer
	b.WriteString(entryContext)
	b.WriteByte(Version)
	b.WriteByte(byte(len(c.Node)))
	b.WriteString(c.Node)
	b.Write(c.PublicKey[:])
	ep := c.Endpoint.String()
	b.WriteByte(byte(len(ep)))
	b.WriteString(ep)
	a16 := c.Prefix.Addr().As16()
	b.Write(a16[:])
	b.WriteByte(byte(c.Prefix.Bits()))
	binary.Write(&b, binary.BigEndian, uint32(c.Keepalive/time.Second))
	b.Write(c.GatewayKey[:])
	gep := ""
	if c.GatewayEndpoint.IsValid() {
		gep = c.GatewayEndpoint.String()
	}
	b.WriteByte(byte(len(gep)))
	b.WriteString(gep)
	binary.Write(&b, binary.BigEndian, c.Serial)
	return b.Bytes()
}

// Sign signs the claims with a host's identity key.
func Sign(identity ed25519.PrivateKey, c Claims) []byte {
	return ed25519.Sign(identity, c.Bytes())
}

// VerifyEntry verifies an entry: its credential (VerifyCredential), that
// the claims' node and prefix are the credential's, and that the
// credential's identity signed the claims. It returns the credential.
func VerifyEntry(credential []byte, c Claims, sig []byte, trusted []ed25519.PublicKey, now time.Time) (Credential, error) {
	cred, err := CheckEntry(credential, c, sig, trusted)
	if err == nil && !now.Before(cred.NotAfter) {
		return Credential{}, fmt.Errorf("%w at %s", ErrExpired, cred.NotAfter.Format(time.RFC3339))
	}
	return cred, err
}

// CheckEntry is VerifyEntry but for the credential's expiry, which the
// caller checks (Credential.NotAfter) at each use: a verdict cached for an
// unchanged entry holds until then.
func CheckEntry(credential []byte, c Claims, sig []byte, trusted []ed25519.PublicKey) (Credential, error) {
	return CheckEntryWith(Single{}, credential, c, sig, trusted)
}

// CheckEntryWith is CheckEntry verifying the signatures through v.
func CheckEntryWith(v Verifier, credential []byte, c Claims, sig []byte, trusted []ed25519.PublicKey) (Credential, error) {
	cred, err := checkCredential(v, credential, trusted)
	if err != nil {
		return Credential{}, err
	}
	if c.Node != cred.Node {
		return Credential{}, fmt.Errorf("%w: node %q, credential for %q", ErrMismatch, c.Node, cred.Node)
	}
	if c.Prefix != cred.Prefix {
		return Credential{}, fmt.Errorf("%w: prefix %s, credential for %s", ErrMismatch, c.Prefix, cred.Prefix)
	}
	if len(c.Node) > maxNode || len(c.Endpoint.String()) > maxEndpoint {
		return Credential{}, fmt.Errorf("%w: claims too long", ErrMalformed)
	}
	if len(sig) != ed25519.SignatureSize || !v.Check(cred.Identity, c.Bytes(), sig) {
		return Credential{}, fmt.Errorf("%w: entry of %s", ErrBadSig, c.Node)
	}
	return cred, nil
}

// ParseSignature decodes a Meta signature value: base64 of 64 bytes.
func ParseSignature(s string) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: signature is not base64 of %d bytes", ErrMalformed, ed25519.SignatureSize)
	}
	return b, nil
}

// Signer signs a host's entries: its identity key and the credential an
// authority issued for that identity. It never prints the key.
type Signer struct {
	identity   ed25519.PrivateKey
	credential []byte
	parsed     Credential
}

// NewSigner pairs an identity seed (32 bytes) with its credential; the
// credential must name that identity (its signature is checked by those
// who verify entries, not here: a host need not trust its own authority).
func NewSigner(seed, credential []byte) (*Signer, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%w: an identity seed is %d bytes", ErrMalformed, ed25519.SeedSize)
	}
	id := ed25519.NewKeyFromSeed(seed)
	c, _, err := ParseCredential(credential)
	if err != nil {
		return nil, err
	}
	if !c.Identity.Equal(id.Public()) {
		return nil, fmt.Errorf("%w: the credential is for identity %s, this host's identity is %s", ErrMismatch,
			base64.StdEncoding.EncodeToString(c.Identity), base64.StdEncoding.EncodeToString(id.Public().(ed25519.PublicKey)))
	}
	return &Signer{identity: id, credential: slices.Clone(credential), parsed: c}, nil
}

// Credential is the signer's credential's bytes.
func (s *Signer) Credential() []byte { return s.credential }

// Parsed is the signer's credential's fields.
func (s *Signer) Parsed() Credential { return s.parsed }

// Sign signs claims with the identity key.
func (s *Signer) Sign(c Claims) []byte { return Sign(s.identity, c) }

func (s *Signer) String() string {
	return "identity " + base64.StdEncoding.EncodeToString(s.identity.Public().(ed25519.PublicKey))
}

// GoString keeps %#v from printing the identity key.
func (s *Signer) GoString() string { return s.String() }

// IdentityPublic is the public key of an identity seed.
func IdentityPublic(seed []byte) (ed25519.PublicKey, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%w: an identity seed is %d bytes", ErrMalformed, ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey), nil
}

// ParsePublicKey decodes a base64 ed25519 public key (an authority's, in
// trust.authorities, or an identity's).
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: %q is not a base64 %d-byte ed25519 public key", ErrMalformed, clipString(s), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

func clipString(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
