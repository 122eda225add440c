// The Key Vault of upstream credentials (e.g. a Docker Hub user and token). Nothing here writes a
// secret: you set them after deployment (README, "Deploying to Azure"). Access is Azure RBAC only,
// no access policies, so who may read which secret is a role assignment like every other grant.

@description('Key Vault name (3-24 letters, digits and dashes, globally unique).')
param name string

param location string
param tags object = {}

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
    // short, so that `azd down --purge` and a redeploy under the same name are painless
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
