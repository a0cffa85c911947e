package peers

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"meshd.dev/meshd/trust"
)

// Meta keys of a signed entry (README "Trust"), and of a gateway's user
// link, which the signature covers too.
const (
	MetaCredential = "credential"
	MetaSignature  = "signature"
	MetaSerial     = "serial"

	MetaGatewayPublicKey = "gateway_public_key"
	MetaGatewayEndpoint  = "gateway_endpoint"
)

// Rejection codes of the trust checks that depend on more than the entry
// (its credential's expiry, revocations, the serials seen before).
const (
	CodeExpired = "expired"
	CodeRevoked = "revoked"
	CodeReplay  = "replay"
)

// Trust is what an entry must prove before it is a peer: a credential
// from one of Authorities naming the entry's node and prefix, and the
// credential's identity's signature over every field a peer uses.
type Trust struct {
	Authorities []ed25519.PublicKey

	// verifier checks the signatures (nil: trust.Single); the parse
	// workers of a first read give each chunk a trust.Batch.
	verifier trust.Verifier
}

// batched is t verifying through b.
func (t *Trust) batched(b *trust.Batch) *Trust {
	c := *t
	c.verifier = b
	return &c
}

// Claims are the fields of p and meta (a gateway's user link) that the
// host's identity signs, with serial.
func Claims(p Peer, meta map[string]string, serial uint64) (trust.Claims, error) {
	c := trust.Claims{Node: p.Node, PublicKey: p.PublicKey, Endpoint: p.Endpoint, Prefix: p.Prefix,
		Keepalive: p.Keepalive, Serial: serial}
	if s, ok := meta[MetaGatewayPublicKey]; ok {
		k, err := ParsePublicKey(s)
		if err != nil {
			return trust.Claims{}, bad("gateway", "%s: %v", MetaGatewayPublicKey, err)
		}
		c.GatewayKey = k
	}
	if s, ok := meta[MetaGatewayEndpoint]; ok {
		ep, err := ParseEndpoint(s)
		if err != nil {
			return trust.Claims{}, bad("gateway", "%s: %v", MetaGatewayEndpoint, err)
		}
		c.GatewayEndpoint = ep
	}
	return c, nil
}

// Sign adds to meta (an entry's Meta, EncodeMeta's output) the signer's
// credential, serial and signature over p's claims.
func Sign(meta map[string]string, p Peer, s *trust.Signer, serial uint64) (map[string]string, error) {
	c, err := Claims(p, meta, serial)
	if err != nil {
		return nil, err
	}
	m := maps.Clone(meta)
	m[MetaCredential] = base64.StdEncoding.EncodeToString(s.Credential())
	m[MetaSerial] = strconv.FormatUint(serial, 10)
	m[MetaSignature] = base64.StdEncoding.EncodeToString(s.Sign(c))
	return m, nil
}

// verify checks e's credential and signature (not the credential's
// expiry, which Planner checks at each plan) and fills p's trust fields.
func (t *Trust) verify(e Entry, p *Peer) error {
	cred, err := base64.StdEncoding.Strict().DecodeString(e.Meta[MetaCredential])
	if err != nil || len(cred) == 0 {
		return bad("credential", "credential is missing or not base64")
	}
	sig, err := trust.ParseSignature(e.Meta[MetaSignature])
	if err != nil {
		return bad("signature", "%v", err)
	}
	serial, err := strconv.ParseUint(e.Meta[MetaSerial], 10, 64)
	if err != nil {
		return bad("serial", "serial %q is not a number", clip(e.Meta[MetaSerial]))
	}
	claims, err := Claims(*p, e.Meta, serial)
	if err != nil {
		return err
	}
	v := t.verifier
	if v == nil {
		v = trust.Single{}
	}
	c, err := trust.CheckEntryWith(v, cred, claims, sig, t.Authorities)
	switch {
	case errors.Is(err, trust.ErrUntrusted):
		return bad("untrusted", "%v", err)
	case errors.Is(err, trust.ErrMismatch):
		return bad("credential", "%v", err)
	case errors.Is(err, trust.ErrBadSig):
		return bad("signature", "%v", err)
	case err != nil:
		return bad("credential", "%v", err)
	}
	for _, tag := range e.Tags {
		if !slices.Contains(c.Roles, tag) {
			return bad("role", "tag %q is not a role of the node's credential", clip(tag))
		}
	}
	p.Serial, p.NotAfter, p.Identity, p.Roles = serial, c.NotAfter, [32]byte(c.Identity), c.Roles
	return nil
}

// Revoked is what the authority's revocations name: nodes, and identity
// keys. Planner.Revoke takes it.
type Revoked struct {
	Nodes      map[string]bool
	Identities map[[32]byte]bool
}

// Has reports whether p's node or identity is revoked.
func (r Revoked) Has(p Peer) bool { return r.Nodes[p.Node] || r.Identities[p.Identity] }

func (r Revoked) equal(o Revoked) bool {
	return maps.Equal(r.Nodes, o.Nodes) && maps.Equal(r.Identities, o.Identities)
}

// trustState is what the trust checks need beyond an entry: the time, the
// revocations, and the highest serial accepted for each node.
type trustState struct {
	now     time.Time
	revoked Revoked
	serials map[string]uint64
	// nextExpiry is the soonest NotAfter among the accepted peers.
	nextExpiry time.Time
	// changed is set when a serial grew.
	changed bool
}

// check is the verdict of the state on a peer that verified: "" or a
// rejection's code and reason.
func (s *trustState) check(p Peer) (code, reason string) {
	switch {
	case s == nil || p.NotAfter.IsZero():
		return "", ""
	case !s.now.Before(p.NotAfter):
		return CodeExpired, fmt.Sprintf("credential of %s expired at %s", p.Node, p.NotAfter.Format(time.RFC3339))
	case s.revoked.Has(p):
		return CodeRevoked, fmt.Sprintf("node %s or its identity is revoked by the authority", p.Node)
	case p.Serial < s.serials[p.Node]:
		return CodeReplay, fmt.Sprintf("serial %d is older than %d, the last accepted for %s", p.Serial, s.serials[p.Node], p.Node)
	}
	return "", ""
}

// accepted records p's serial and expiry.
func (s *trustState) accepted(p Peer) {
	if s == nil || p.NotAfter.IsZero() {
		return
	}
	if p.Serial > s.serials[p.Node] {
		s.serials[p.Node] = p.Serial
		s.changed = true
	}
	if s.nextExpiry.IsZero() || p.NotAfter.Before(s.nextExpiry) {
		s.nextExpiry = p.NotAfter
	}
}

// keeps reports whether a rejection with this code leaves the node's last
// accepted peer in place: anything but the authority's own word (expiry,
// revocation) is a claim someone else may have written.
func keeps(code string) bool { return code != CodeExpired && code != CodeRevoked }
