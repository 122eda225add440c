// The gate's storage account: the Functions host's blobs, the request queues, the ledger table,
// the validation-log container and the Event Grid dead-letter container. Shared keys are off:
// every caller authenticates with Entra ID, so there is no account key or SAS to leak.

@description('Storage account name (3-24 lowercase letters and digits, globally unique).')
param name string

param location string
param tags object = {}

@description('Blob containers to create: the Flex deployment package, validation logs, dead letters.')
param containerNames array

@description('Storage queues to create (the queue bindings of function_app.py).')
param queueNames array

@description('Tables to create (the Table ledger).')
param tableNames array

resource storage 'Microsoft.Storage/storageAccounts@2025-08-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2025-08-01' = {
  parent: storage
  name: 'default'
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-08-01' = [
  for container in containerNames: {
    parent: blobService
    name: container
    properties: {
      publicAccess: 'None'
    }
  }
]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2025-08-01' = {
  parent: storage
  name: 'default'
}

// Created up front (the host would create them on first use) so that they exist before any
// trigger fires and so that the templates name every queue the app binds to.
resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2025-08-01' = [
  for queue in queueNames: {
    parent: queueService
    name: queue
  }
]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2025-08-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2025-08-01' = [
  for table in tableNames: {
    parent: tableService
    name: table
  }
]

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output tableEndpoint string = storage.properties.primaryEndpoints.table
