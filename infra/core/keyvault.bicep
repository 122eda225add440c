// The Key Vault of upstream credentials (e.g. a Docker Hub user and token). Nothing here writes a
// secret: you set them after deployment (docs/deploy.md). Access is Azure RBAC only,
// no access policies, so who may read which secret is a role assignment like every other grant.

@description('Key Vault name (3-24 letters, digits and dashes, globally unique).')
param name string

param location string
param tags object = {}

@description('Name of the EC P-256 key that signs promotion attestations (docs/guide/evidence.md).')
param attestationKeyName string = 'gate-attestation'

@description('Name of the EC P-256 key that signs promoted digests (the promotion signature; never the attestation key, docs/guide/evidence.md).')
param signatureKeyName string = 'gate-signature'

@description('Resource id of the Log Analytics workspace the vault\'s audit log goes to.')
param workspaceId string

resource vault 'Microsoft.KeyVault/vaults@2026-02-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    // Purge protection: the vault holds the attestation key, and a deleted vault or key must not
    // be purgeable before its retention ends ("When purge protection is on, a vault or an object
    // in the deleted state cannot be purged until the retention period has passed":
    // learn.microsoft.com/azure/key-vault/general/soft-delete-overview). It cannot be turned off
    // again. So `azd down --purge` leaves this vault soft-deleted for the 7 days below (the
    // minimum), its name reserved: azd purges only vaults without purge protection
    // (Azure/azure-dev, cli/azd/pkg/infra/provisioning/bicep/bicep_provider.go,
    // getKeyVaultsToPurge). A new azd environment gets a new name (resourceToken).
    enablePurgeProtection: true
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
  }
}

// The key that signs promotion attestations. It is used inside the vault only (the app calls the
// key's sign operation; an EC key's private part is not exportable). Through ARM a key is created
// once: when it exists already, a redeployment returns it unchanged and makes no new version
// (Keys - Create If Not Exist, Microsoft.KeyVault REST 2026-02-01), so verifiers' public key holds.
resource attestationKey 'Microsoft.KeyVault/vaults/keys@2026-02-01' = {
  parent: vault
  name: attestationKeyName
  properties: {
    kty: 'EC'
    curveName: 'P-256'
    keyOps: [
      'sign'
      'verify'
    ]
  }
}

// The key of the promotion signature (cosign's .sig layout; removed again on demotion), a key of
// its own: cosign 3's verify --key accepts any bundle the key signed whose subject is the digest,
// so with the attestation key a FAILED demotion attestation would count as an approval. Created
// like the attestation key (Keys - Create If Not Exist).
resource signatureKey 'Microsoft.KeyVault/vaults/keys@2026-02-01' = {
  parent: vault
  name: signatureKeyName
  properties: {
    kty: 'EC'
    curveName: 'P-256'
    keyOps: [
      'sign'
      'verify'
    ]
  }
}

// Diagnostic settings are an extension resource (`scope:` the resource they watch), type and
// properties as in Bicep's types for Microsoft.Insights/diagnosticSettings@2021-05-01-preview
// (Azure/bicep-types-az, generated/monitor/microsoft.insights/2021-05-01-preview/types.md).
// logAnalyticsDestinationType 'Dedicated' writes each category to its own resource-specific table
// instead of AzureDiagnostics (same types.md: "Possible values are: Dedicated and null").
//
// The vault's audit log: category AuditEvent, every authenticated request (secret reads included)
// with the caller's identity, in table AZKVAuditLogs (learn.microsoft.com/azure/azure-monitor/
// reference/supported-logs/microsoft-keyvault-vaults-logs). The foreign-secret-read alert of
// core/monitoring.bicep reads that table.
resource auditLog 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'gate-audit'
  scope: vault
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

output id string = vault.id
output attestationKeyName string = attestationKey.name
output attestationKeyUri string = attestationKey.properties.keyUri
output signatureKeyName string = signatureKey.name
output signatureKeyUri string = signatureKey.properties.keyUri
output name string = vault.name
output uri string = vault.properties.vaultUri
