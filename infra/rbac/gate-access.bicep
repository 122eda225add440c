// Role assignments inside the gate's own resource group: storage, Application Insights, Key Vault
// and the runner identity.
// Each is named guid(scope, principal, role) so a redeployment finds it again instead of failing on
// a duplicate, and each is scoped to the one resource it is about.

param storageAccountName string
param applicationInsightsName string
param keyVaultName string

@description('Name of the vault\'s attestation signing key (core/keyvault.bicep).')
param attestationKeyName string

@description('Name of the vault\'s promotion signature key (core/keyvault.bicep).')
param signatureKeyName string

@description('Blob container Event Grid dead-letters undeliverable push events into.')
param deadLetterContainerName string

@description('Principal id of the gate\'s user-assigned identity (the Function app).')
param appPrincipalId string

@description('Name of the runner\'s user-assigned identity (in this resource group), attached to each validation taskRun.')
param runnerIdentityName string

@description('Principal id of that identity.')
param runnerPrincipalId string

@description('Names of the vault secrets validation runs read (the upstream credentials gate.yaml names: registries[].username_secret and password_secret); the runner identity may read these and no other.')
param runnerSecretNames array = []

@description('Principal id of the upstream registry\'s Event Grid system topic; empty: no topic.')
param topicPrincipalId string = ''

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User
  keyVaultCryptoUser: '12338af0-0e69-4776-bea7-57ae8d297424' // Key Vault Crypto User
  managedIdentityOperator: 'f1a07417-d97a-45cb-824c-7a7467783830' // Managed Identity Operator
}

resource storage 'Microsoft.Storage/storageAccounts@2025-08-01' existing = {
  name: storageAccountName

  resource blobService 'blobServices' existing = {
    name: 'default'

    resource deadLetters 'containers' existing = {
      name: deadLetterContainerName
    }
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource vault 'Microsoft.KeyVault/vaults@2026-02-01' existing = {
  name: keyVaultName

  resource attestationKey 'keys' existing = {
    name: attestationKeyName
  }

  resource signatureKey 'keys' existing = {
    name: signatureKeyName
  }

  // the secrets validation runs read; a secret must exist before a role can be assigned on it
  // (Bicep loops over child resources: learn.microsoft.com/azure/azure-resource-manager/bicep/loops)
  resource upstreamCredentials 'secrets' existing = [
    for name in runnerSecretNames: {
      name: name
    }
  ]
}

resource runnerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' existing = {
  name: runnerIdentityName
}

// The app, on its storage account:
// - blob data owner: the Functions host keeps its leases and state in blobs (it needs Owner, not
//   Contributor, for identity-based AzureWebJobsStorage), Flex pulls the code package from a blob
//   container, and the Table ledger writes validation logs as blobs;
// - queue data contributor: the triggers enqueue gate requests, the worker dequeues them and the
//   host moves poisoned ones to gate-requests-poison;
// - table data contributor: the Table ledger reads and writes gate records.
var appStorageRoles = [
  roles.storageBlobDataOwner
  roles.storageQueueDataContributor
  roles.storageTableDataContributor
]

resource appStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in appStorageRoles: {
    name: guid(storage.id, appPrincipalId, role)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: appPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

// The app, on Application Insights: local authentication is off, so telemetry needs this role.
resource appTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The app, on the vault: upstream credentials for ACR imports from registries outside the tenant
// (registries[].username_secret / password_secret in gate.yaml). Vault-wide, unlike the runner's:
// the app runs only the gate's own code, no candidate's, and reads whichever secrets its gate.yaml
// names without a redeployment.
resource appSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The app, on the attestation key only: it signs each promotion's attestation with the key's sign
// operation (and reads the public key); Key Vault Crypto User grants the key data actions (read,
// sign, verify, ...) and nothing on secrets or other resources; scoped to this one key
// (learn.microsoft.com/azure/key-vault/general/rbac-guide: roles can be assigned on a key).
resource appSignsAttestations 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault::attestationKey.id, appPrincipalId, roles.keyVaultCryptoUser)
  scope: vault::attestationKey
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultCryptoUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The app, on the signature key only: it signs each promoted digest (cosign's simple-signing
// payload) with the key's sign operation; the same role as on the attestation key, scoped to this
// other key.
resource appSignsPromotions 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault::signatureKey.id, appPrincipalId, roles.keyVaultCryptoUser)
  scope: vault::signatureKey
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultCryptoUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The app, on the runner identity only: attaching a user-assigned identity to a resource (here
// each validation taskRun) takes Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action
// on that identity, which Managed Identity Operator grants (learn.microsoft.com/azure/
// role-based-access-control/built-in-roles/identity#managed-identity-operator). Scoped to this one
// identity, so the gate cannot lend its runs any other identity.
resource appAttachesRunner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(runnerIdentity.id, appPrincipalId, roles.managedIdentityOperator)
  scope: runnerIdentity
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.managedIdentityOperator)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The runner identity, on each secret it must read and on nothing else of the vault: a validation
// run reads the upstream credentials itself (the gate passes secret URIs, never values) with the
// identity attached to its taskRun. A task's managed identity is there for its steps ("use a
// managed identity to pull or push container images to another registry as a step in a task":
// learn.microsoft.com/azure/container-registry/container-registry-tasks-authentication-managed-identity),
// and the candidate image runs as a step,
// so a vault-wide grant would let a malicious upstream image read every secret, the app's
// included. Key Vault RBAC assigns a role on one secret as on any resource
// (learn.microsoft.com/azure/key-vault/general/rbac-guide, "Secret scope role assignment").
resource runnerSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (name, i) in runnerSecretNames: {
    name: guid(vault::upstreamCredentials[i].id, runnerPrincipalId, roles.keyVaultSecretsUser)
    scope: vault::upstreamCredentials[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
      principalId: runnerPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

// The upstream registry's system topic, on the dead-letter container only: Event Grid writes the
// push events it could not deliver there with its own identity (no SAS, no key).
resource topicDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(topicPrincipalId)) {
  name: guid(storage::blobService::deadLetters.id, topicPrincipalId, roles.storageBlobDataContributor)
  scope: storage::blobService::deadLetters
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: topicPrincipalId
    principalType: 'ServicePrincipal'
  }
}
