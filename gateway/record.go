package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/peers"
)

// KVRoot is where every gateway's records live.
const KVRoot = "meshd/gateways/"

// Tag marks a gateway's service instance; the Meta keys below carry what a
// user's configuration needs from it.
const (
	Tag                  = "gateway"
	MetaGatewayPublicKey = peers.MetaGatewayPublicKey
	MetaGatewayEndpoint  = peers.MetaGatewayEndpoint
	MetaGatewayPool      = "gateway_pool"
)

// TreeKey is the KV folder of everything gateway gw owns.
func TreeKey(gw string) string { return KVRoot + gw + "/" }

// PeersKey is the KV folder of gateway gw's peer records: the one folder its
// meshd watches.
func PeersKey(gw string) string { return TreeKey(gw) + "peers/" }

// RecordKey is the KV key of one peer record. A name is unique per gateway
// and organization, so both are part of the key.
func RecordKey(gw, org, name string) string { return PeersKey(gw) + org + "/" + name }

// AddressesKey is the KV folder of gateway gw's address claims.
func AddressesKey(gw string) string { return TreeKey(gw) + "addresses/" }

// AddressKey is the KV key of the claim on one peer address; its value is
// "org/name" of the peer holding it.
func AddressKey(gw string, a netip.Addr) string { return AddressesKey(gw) + a.String() }

// Record is one user peer of a gateway, as stored in KV.
type Record struct {
	Org       string         `json:"org"`
	Name      string         `json:"name"`
	PublicKey string         `json:"public_key"`
	Address   netip.Addr     `json:"address"`
	Allow     []netip.Prefix `json:"allow"`
	Created   time.Time      `json:"created"`
	Expires   *time.Time     `json:"expires,omitempty"`
}

// ID is "org/name", unique per gateway.
func (r Record) ID() string { return r.Org + "/" + r.Name }

// Expired reports whether the record's expiry has passed at now.
func (r Record) Expired(now time.Time) bool { return r.Expires != nil && !now.Before(*r.Expires) }

// Key is the record's public key; Validate has checked it.
func (r Record) Key() wgtypes.Key {
	k, _ := peers.ParsePublicKey(r.PublicKey)
	return k
}

// Encode is the record's KV value.
func (r Record) Encode() []byte {
	b, err := json.Marshal(r)
	if err != nil {
		panic(err) // every field marshals
	}
	return b
}

// MaxRecord bounds a record's size; anything larger did not come from meshd.
const MaxRecord = 16 << 10

// MaxAllow bounds a record's allow list.
const MaxAllow = 64

// Decode parses and validates a record read from key under gateway gw's
// peers folder: unknown fields, a record whose org/name differ from its key,
// or any invalid field is an error naming what was wrong.
func Decode(gw, key string, value []byte) (Record, error) {
	if len(value) > MaxRecord {
		return Record{}, fmt.Errorf("record %s is %d bytes, more than %d", key, len(value), MaxRecord)
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	var r Record
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("record %s is not a peer record: %v", key, err)
	}
	if dec.More() {
		return Record{}, fmt.Errorf("record %s has data after the JSON object", key)
	}
	if want := RecordKey(gw, r.Org, r.Name); key != want {
		return Record{}, fmt.Errorf("record %s names %q, which belongs at %s", key, r.ID(), want)
	}
	if err := r.Validate(); err != nil {
		return Record{}, fmt.Errorf("record %s: %w", key, err)
	}
	return r, nil
}

// Validate checks a record's fields on their own; whether its address lies
// in the gateway's pool and its allow list in the supernet is checked where
// those are known (Desire, Create).
func (r Record) Validate() error {
	var errs []error
	if !peers.IsDNSLabel(r.Org) {
		errs = append(errs, fmt.Errorf("org %q is not a DNS label", r.Org))
	}
	if !peers.IsDNSLabel(r.Name) {
		errs = append(errs, fmt.Errorf("name %q is not a DNS label", r.Name))
	}
	if _, err := peers.ParsePublicKey(r.PublicKey); err != nil {
		errs = append(errs, err)
	}
	if !r.Address.Is6() || r.Address.Is4In6() || r.Address.Zone() != "" {
		errs = append(errs, fmt.Errorf("address %q is not an IPv6 address", r.Address))
	}
	if len(r.Allow) == 0 || len(r.Allow) > MaxAllow {
		errs = append(errs, fmt.Errorf("allow has %d prefixes, want 1 to %d", len(r.Allow), MaxAllow))
	}
	for _, p := range r.Allow {
		if peers.CheckIPv6Prefix(p) != nil {
			errs = append(errs, fmt.Errorf("allow %s is not a masked IPv6 CIDR", p))
		}
	}
	if r.Created.IsZero() {
		errs = append(errs, errors.New("created is missing"))
	}
	if err := errors.Join(errs...); err != nil {
		return errors.New(errString(err))
	}
	return nil
}
